// What the console page (web/console.js) takes from npm, bundled by
// build.sh into rfb.js: noVNC's RFB client (RFB over a websocket into a
// canvas, keyboard and mouse), nothing of noVNC's own page.
export { default as RFB } from '@novnc/novnc';
