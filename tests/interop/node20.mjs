// Node 20 lacks Promise.withResolvers (Node 22), which it-queue (under libp2p) calls. Imported
// first by harness.mjs, so it runs before any libp2p module.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
