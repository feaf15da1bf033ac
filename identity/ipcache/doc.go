// Package ipcache maps address prefixes to security identities: the Go
// model of Cilium's ipcache, which the datapath consults to learn the
// identity of a packet's peer.
//
// An [IPCache] answers longest-prefix-match lookups, IPv4 and IPv6 apart,
// and forwards every change to its registered [Writer]s (the datapath's
// ipcache map implements Writer), all or nothing: when a writer fails, the
// writers already changed are put back and the ipcache stays as it was, so
// that the model and the kernel never disagree without an error having said
// so. [IPCache.Watch] streams the changes to anyone else who follows them.
//
// Identities come from package identity; this package only records which
// prefix has which one. An IPCache holds no OS resources and needs no Close.
//
// Errors wrap [ErrPrefixNotFound], [ErrWriter] (as a [*WriterError], which
// also says whether a writer was left out of step until [IPCache.Resync]),
// [ErrInvalidWriter], or identity.ErrInvalidPrefix and identity.ErrInvalidID
// for invalid input. A call that fails changes nothing.
package ipcache
