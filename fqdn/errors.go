package fqdn

import "errors"

var (
	// ErrInvalidSelector is returned for a selector that is neither a valid
	// matchName nor a valid matchPattern.
	ErrInvalidSelector = errors.New("invalid FQDN selector")
	// ErrInvalidName is returned for a DNS name that cannot be cached.
	ErrInvalidName = errors.New("invalid DNS name")
)
