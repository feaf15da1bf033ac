package identity

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/nodeplane/nodeplane/internal/statefile"
	"github.com/nodeplane/nodeplane/internal/watch"
)

// Sentinel errors. Every error the package returns wraps one of them, so
// callers can branch with [errors.Is] and still print a message that names
// the offending input.
var (
	// ErrInvalidLabel: a label or label list is malformed.
	ErrInvalidLabel = errors.New("invalid label")
	// ErrInvalidSelector: a label selector does not validate.
	ErrInvalidSelector = errors.New("invalid selector")
	// ErrInvalidID: a numeric identity is outside every valid range, or in
	// the wrong range for the operation.
	ErrInvalidID = errors.New("invalid identity")
	// ErrInvalidPrefix: a CIDR does not parse or is not usable.
	ErrInvalidPrefix = errors.New("invalid prefix")
	// ErrNoLabels: an identity was requested for an empty label set.
	ErrNoLabels = errors.New("empty label set")
	// ErrNotAllocated: Release of an ID that holds no reference, e.g. a
	// duplicate release.
	ErrNotAllocated = errors.New("identity not allocated")
	// ErrWrongScope: the label set belongs to a scope the allocator does not
	// serve (e.g. k8s labels given to a [LocalAllocator]).
	ErrWrongScope = errors.New("labels not in allocator scope")
	// ErrExhausted: every ID of the range is in use.
	ErrExhausted = errors.New("identity space exhausted")
	// ErrWatcherOverflow: a watcher fell further behind than its backlog
	// limit and was cut off; watch again to resynchronise.
	ErrWatcherOverflow = watch.ErrOverflow
	// ErrCorruptState: a persisted state file is torn, corrupt or
	// inconsistent with the configuration. It is the same error as
	// ipam.ErrCorrupt: one sentinel for every state file.
	ErrCorruptState = statefile.ErrCorrupt
)

// LabelError describes a malformed label. It wraps [ErrInvalidLabel].
type LabelError struct {
	// Label is the input as given (the string form for parsed labels).
	Label string
	// Reason says what is wrong with it.
	Reason string
}

func (e *LabelError) Error() string {
	return fmt.Sprintf("invalid label %s: %s", strconv.Quote(e.Label), e.Reason)
}

// Unwrap returns [ErrInvalidLabel].
func (e *LabelError) Unwrap() error { return ErrInvalidLabel }

// SelectorError describes one validation failure of a [LabelSelector]. It
// wraps [ErrInvalidSelector]. Several failures are joined with
// [errors.Join]; [errors.As] finds the first.
type SelectorError struct {
	// Field is the path of the offending field inside the selector, in
	// Kubernetes notation: "matchLabels[k8s:app]",
	// "matchExpressions[1].operator", "matchExpressions[0].values[2]".
	Field string
	// Value is the offending value.
	Value string
	// Reason says what is wrong with it.
	Reason string
}

func (e *SelectorError) Error() string {
	return fmt.Sprintf("%s: invalid value %s: %s", e.Field, strconv.Quote(e.Value), e.Reason)
}

// Unwrap returns [ErrInvalidSelector].
func (e *SelectorError) Unwrap() error { return ErrInvalidSelector }
