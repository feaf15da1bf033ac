package statefile

import "errors"

// Sentinel errors; test them with [errors.Is].
var (
	// ErrCorrupt: a state file is torn, damaged, of another kind or
	// version, or holds content its reader rejects. identity and ipam
	// export it as identity.ErrCorruptState and ipam.ErrCorrupt.
	ErrCorrupt = errors.New("corrupt state")
	// ErrInvalidPath: a state file path is empty or names no file.
	ErrInvalidPath = errors.New("invalid state file path")
	// ErrLocked: another holder, in this process or another, has the lock.
	ErrLocked = errors.New("locked by another holder")
)
