package lb

import (
	"errors"
	"syscall"
)

var (
	// ErrInvalidConfig reports a Config that New cannot use: no cgroup, a
	// map size out of range, or a Maglev table size or seed that
	// lb/maglev refuses (the error also wraps that one).
	ErrInvalidConfig = errors.New("invalid load balancer config")
	// ErrInvalidService reports a Service that cannot be programmed: a bad
	// frontend address, protocol, type, algorithm or affinity timeout.
	ErrInvalidService = errors.New("invalid service")
	// ErrInvalidBackend reports a backend list that cannot be programmed: a
	// bad address, a family that differs from the frontend's, a duplicate, an
	// unknown state, or too many backends.
	ErrInvalidBackend = errors.New("invalid backend")
	// ErrServiceNotFound reports an operation on a frontend that has no
	// service.
	ErrServiceNotFound = errors.New("service not found")
	// ErrFull reports that a map or an ID space has no room for the update.
	// Nothing was changed.
	ErrFull = errors.New("load balancer full")
	// ErrPinnedState reports pinned maps whose content is not a state this
	// package wrote. Remove the pin directory to start afresh.
	ErrPinnedState = errors.New("inconsistent pinned state")
	// ErrNoBackends is the model's answer for a connect to a service without
	// an active backend. The kernel refuses such a connect() or sendmsg()
	// with EHOSTUNREACH, as Cilium does, so errors.Is(ErrNoBackends,
	// syscall.EHOSTUNREACH) holds.
	ErrNoBackends error = noBackendsError{}
)

type noBackendsError struct{}

func (noBackendsError) Error() string { return "service has no active backend" }

func (noBackendsError) Is(target error) bool { return target == syscall.EHOSTUNREACH }
