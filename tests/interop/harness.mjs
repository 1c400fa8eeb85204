// js-libp2p kad-dht harness for tests/interop_js.rs. Loopback only: it listens on 127.0.0.1 and
// dials only the multiaddr it is given.
//
//   node harness.mjs server
//       a DHT server on /ip4/127.0.0.1/tcp/0; prints one JSON line {"peer","addrs"} once
//       listening, then serves until stdin closes or SIGTERM.
//   node harness.mjs find-providers BOOTSTRAP_MULTIADDR KEY_HEX [TIMEOUT_MS] [WANT_PEER_ID]
//       a DHT client: dials BOOTSTRAP, then runs findProviders(KEY) until it returns a provider
//       (or WANT_PEER_ID, if given) or the timeout passes; prints one JSON line
//       {"providers":[{"peer","addrs"}]} and exits 0 (an empty list when none was found).
//
// KEY_HEX is the raw Kademlia key (for leasewire, the 34-byte sha2-256 multihash `dht_key` of
// docs/PROTOCOL.md §3): js kad-dht takes a CID and uses its multihash bytes as the key.
import './node20.mjs'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { multiaddr } from '@multiformats/multiaddr'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'

const RAW_CODEC = 0x55

async function start (server) {
  return createLibp2p({
    addresses: { listen: server ? ['/ip4/127.0.0.1/tcp/0'] : [] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      identify: identify(),
      ping: ping(),
      dht: kadDHT({
        protocol: '/ipfs/kad/1.0.0',
        clientMode: !server,
        // Keep loopback addresses: the default mappers of a public DHT drop them.
        peerInfoMapper: passthroughMapper,
        allowQueryWithZeroPeers: true
      })
    }
  })
}

function hexToBytes (hex) {
  if (!/^([0-9a-fA-F]{2})+$/.test(hex)) throw new Error(`bad hex key: ${hex}`)
  return Uint8Array.from(hex.match(/../g).map(b => parseInt(b, 16)))
}

async function server () {
  const node = await start(true)
  // On loopback the DHT cannot tell it is dialable; a LAN/test DHT is set to server by hand.
  await node.services.dht.setMode('server')
  const addrs = node.getMultiaddrs().map(String)
  console.log(JSON.stringify({ peer: node.peerId.toString(), addrs }))
  const stop = async () => { await node.stop(); process.exit(0) }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  // The parent closes stdin (or dies): stop, so no process is left behind.
  process.stdin.on('end', stop)
  process.stdin.on('close', stop)
  process.stdin.resume()
}

async function findProviders (bootstrap, keyHex, timeoutMs, want) {
  if (!bootstrap.startsWith('/ip4/127.') && !bootstrap.startsWith('/ip6/::1/')) {
    throw new Error(`not loopback: ${bootstrap}`)
  }
  const ma = multiaddr(bootstrap)
  const cid = CID.createV1(RAW_CODEC, Digest.decode(hexToBytes(keyHex)))
  const node = await start(false)
  const deadline = Date.now() + timeoutMs
  const found = new Map()
  try {
    await node.dial(ma)
    while (Date.now() < deadline) {
      try {
        const signal = AbortSignal.timeout(Math.max(1, deadline - Date.now()))
        for await (const ev of node.services.dht.findProviders(cid, { signal })) {
          if (ev.name !== 'PROVIDER') continue
          for (const p of ev.providers) found.set(p.id.toString(), p.multiaddrs.map(String))
        }
      } catch (err) {
        console.error(`findProviders: ${err.message}`)
      }
      if (want ? found.has(want) : found.size > 0) break
      // A real wait between lookups: the provider may not have announced yet.
      await new Promise(resolve => setTimeout(resolve, 200))
    }
  } finally {
    const providers = [...found].map(([peer, addrs]) => ({ peer, addrs }))
    console.log(JSON.stringify({ providers }))
    await node.stop()
  }
}

const [cmd, ...args] = process.argv.slice(2)
if (cmd === 'server') {
  await server()
} else if (cmd === 'find-providers' && args.length >= 2) {
  await findProviders(args[0], args[1], Number(args[2] ?? 20000), args[3])
  process.exit(0)
} else {
  console.error('usage: harness.mjs server | find-providers BOOTSTRAP KEY_HEX [TIMEOUT_MS] [WANT]')
  process.exit(2)
}
