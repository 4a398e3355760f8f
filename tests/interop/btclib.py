#!/usr/bin/env python3
"""python-bitcoinlib side of deorch's interop tests (P2PKH only: that is
all bitcoin.signmessage supports).

usage:
  btclib.py NETWORK sign WIF MESSAGE_HEX         -> prints the base64 signature
  btclib.py NETWORK verify ADDRESS SIG MESSAGE_HEX -> prints ok (exit 0) or bad (exit 1)
  btclib.py NETWORK address WIF                  -> prints the P2PKH address
NETWORK is mainnet, testnet or regtest.
"""
import sys

import bitcoin
from bitcoin.signmessage import BitcoinMessage, SignMessage, VerifyMessage
from bitcoin.wallet import CBitcoinSecret, P2PKHBitcoinAddress


def main(argv):
    network, cmd, *args = argv
    bitcoin.SelectParams({"mainnet": "mainnet", "testnet": "testnet", "regtest": "regtest"}[network])
    if cmd == "sign":
        wif, message_hex = args
        key = CBitcoinSecret(wif)
        message = BitcoinMessage(bytes.fromhex(message_hex).decode("utf-8"))
        print(SignMessage(key, message).decode("ascii"))
        return 0
    if cmd == "verify":
        address, sig, message_hex = args
        message = BitcoinMessage(bytes.fromhex(message_hex).decode("utf-8"))
        try:
            ok = VerifyMessage(address, message, sig)
        except Exception as e:  # malformed input counts as "does not verify"
            print(f"bad: {e}")
            return 1
        print("ok" if ok else "bad")
        return 0 if ok else 1
    if cmd == "address":
        (wif,) = args
        print(P2PKHBitcoinAddress.from_pubkey(CBitcoinSecret(wif).pub))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
