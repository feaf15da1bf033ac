package nodeplane

import (
	"errors"
	"os"
)

// Sentinel errors shared by every package of the SDK. Test them with
// [errors.Is]; the packages wrap them with what failed.
var (
	// ErrNotSupported is wrapped by every error that reports a kernel or
	// system feature this machine lacks (a BPF program type, a qdisc, a
	// tunnel type).
	ErrNotSupported = errors.New("not supported")
	// ErrClosed is wrapped by every error of a method called on an object
	// after its Close (an allocator, a cache, a watcher, a policy engine, a
	// datapath, an endpoint, an event reader, a state-file lock). It is
	// [os.ErrClosed], so code that already tests for that, as readers of
	// cilium/ebpf's ringbuf do, keeps working.
	ErrClosed = os.ErrClosed
)
