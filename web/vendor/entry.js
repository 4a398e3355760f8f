// What the page (web/app.js) takes from npm, bundled by build.sh into
// crypto.js: secp256k1 ECDSA with recoverable signatures, SHA-256 and
// RIPEMD-160 (addresses, BIP-137's digest, base58check), base58check (WIF,
// P2PKH) and bech32 (P2WPKH). Nothing else is exported, so esbuild drops
// the rest of each package.
export { secp256k1 } from '@noble/curves/secp256k1.js';
export { sha256 } from '@noble/hashes/sha2.js';
export { ripemd160 } from '@noble/hashes/legacy.js';
export { createBase58check, bech32, base64 } from '@scure/base';
