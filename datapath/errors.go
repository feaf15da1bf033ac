package datapath

import "errors"

var (
	// ErrInvalidConfig is returned for a [Config] or [EndpointConfig] that
	// fails validation; nothing has been created then.
	ErrInvalidConfig = errors.New("invalid configuration")
	// ErrEndpointExists is returned when adding an endpoint whose ID,
	// address or interface name is taken.
	ErrEndpointExists = errors.New("endpoint exists")
	// ErrBPFFSDirInUse is returned by [New] when another Datapath, in this
	// process or another one, has the same [Config].BPFFSDir open: the
	// endpoints pinned there have one owner at a time.
	ErrBPFFSDirInUse = errors.New("bpffs directory in use by another Datapath")
	// ErrMalformedEvent is returned by [ParseEvent] for a record it cannot
	// decode.
	ErrMalformedEvent = errors.New("malformed event")
)
