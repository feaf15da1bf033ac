package bandwidth

import "errors"

var (
	// ErrInvalidRate: a quantity that does not parse, or a rate outside
	// [MinRate, MaxRate].
	ErrInvalidRate = errors.New("invalid bandwidth")
	// ErrInvalidConfig: a Config that cannot work.
	ErrInvalidConfig = errors.New("invalid bandwidth manager configuration")
)
