package ipcache

import (
	"errors"
	"fmt"
	"net/netip"
)

// Sentinel errors. Besides these, invalid prefixes and entries wrap
// identity.ErrInvalidPrefix and identity.ErrInvalidID.
var (
	// ErrPrefixNotFound: the ipcache holds no entry for the prefix.
	ErrPrefixNotFound = errors.New("prefix not in ipcache")
	// ErrWriter: a registered [Writer] failed; see [*WriterError].
	ErrWriter = errors.New("ipcache writer failed")
	// ErrInvalidWriter: [IPCache.AddWriter] was given a nil writer or one
	// already registered.
	ErrInvalidWriter = errors.New("invalid ipcache writer")
)

// WriterError reports a writer that failed to apply a change. It unwraps
// to both [ErrWriter] and the writer's own error.
type WriterError struct {
	Op     string // "upsert" or "delete"
	Prefix netip.Prefix
	Err    error
	// OutOfSync is set when putting the writer back to the ipcache's
	// state failed too: its entry for Prefix is unknown until
	// [IPCache.Resync] succeeds.
	OutOfSync bool
}

func (e *WriterError) Error() string {
	s := fmt.Sprintf("ipcache writer: %s %v: %v", e.Op, e.Prefix, e.Err)
	if e.OutOfSync {
		s += " (writer out of sync until Resync)"
	}
	return s
}

// Unwrap returns [ErrWriter] and the writer's error.
func (e *WriterError) Unwrap() []error { return []error{ErrWriter, e.Err} }
