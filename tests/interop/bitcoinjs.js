#!/usr/bin/env node
// bitcoinjs-message / bitcoinjs-lib side of deorch's interop tests.
//
// usage:
//   node bitcoinjs.js sign NETWORK TYPE WIF MESSAGE_HEX    -> base64 signature
//     (MESSAGE_HEX `-`: print `ready` once the libraries are loaded, then
//     read the message from the first line of stdin, so a caller can start
//     node, which is slow, and wait for it before it asks for the message)
//   node bitcoinjs.js verify ADDRESS SIG MESSAGE_HEX [electrum] -> ok (exit 0) / bad (exit 1)
//   node bitcoinjs.js address NETWORK TYPE WIF              -> address
// TYPE is p2pkh, p2sh-p2wpkh or p2wpkh; NETWORK mainnet, testnet or regtest.
// `electrum` verifies with checkSegwitAlways (header 31-34 for segwit).
'use strict';
const bitcoin = require('bitcoinjs-lib');
const message = require('bitcoinjs-message');
const ecc = require('tiny-secp256k1');
const { ECPairFactory } = require('ecpair');

const ECPair = ECPairFactory(ecc);
const networks = {
  mainnet: bitcoin.networks.bitcoin,
  testnet: bitcoin.networks.testnet,
  regtest: bitcoin.networks.regtest,
};
const segwitType = { p2pkh: undefined, 'p2sh-p2wpkh': 'p2sh(p2wpkh)', p2wpkh: 'p2wpkh' };

function address(network, type, pair) {
  const pubkey = Buffer.from(pair.publicKey);
  if (type === 'p2pkh') return bitcoin.payments.p2pkh({ pubkey, network }).address;
  if (type === 'p2wpkh') return bitcoin.payments.p2wpkh({ pubkey, network }).address;
  if (type === 'p2sh-p2wpkh') {
    return bitcoin.payments.p2sh({ redeem: bitcoin.payments.p2wpkh({ pubkey, network }), network }).address;
  }
  throw new Error(`unknown type ${type}`);
}

function main(argv) {
  const [cmd, ...args] = argv;
  if (cmd === 'sign') {
    const [net, type, wif, arg] = args;
    if (arg === '-') console.log('ready');
    const hex = arg === '-' ? require('fs').readFileSync(0, 'utf8').split('\n')[0].trim() : arg;
    const pair = ECPair.fromWIF(wif, networks[net]);
    const opts = segwitType[type] ? { segwitType: segwitType[type] } : undefined;
    const sig = message.sign(Buffer.from(hex, 'hex'), Buffer.from(pair.privateKey), pair.compressed, opts);
    console.log(sig.toString('base64'));
    return 0;
  }
  if (cmd === 'verify') {
    const [addr, sig, hex, mode] = args;
    let ok;
    try {
      ok = message.verify(Buffer.from(hex, 'hex'), addr, sig, null, mode === 'electrum');
    } catch (e) {
      console.log(`bad: ${e.message}`);
      return 1;
    }
    console.log(ok ? 'ok' : 'bad');
    return ok ? 0 : 1;
  }
  if (cmd === 'address') {
    const [net, type, wif] = args;
    console.log(address(networks[net], type, ECPair.fromWIF(wif, networks[net])));
    return 0;
  }
  console.error('usage: see the comment at the top of this file');
  return 2;
}

process.exitCode = main(process.argv.slice(2));
