package nodeplane

import "errors"

// ErrNotSupported is wrapped by every error that reports a kernel or system
// feature this machine lacks (a BPF program type, a qdisc, a tunnel type).
// Test it with [errors.Is].
var ErrNotSupported = errors.New("not supported")
