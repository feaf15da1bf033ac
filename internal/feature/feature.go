// Package feature caches probes for kernel features and reports missing ones
// as errors that wrap [nodeplane.ErrNotSupported].
package feature

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane"
)

// UnsupportedFeatureError says which feature this kernel lacks and since when
// mainline Linux has it. It wraps [nodeplane.ErrNotSupported].
type UnsupportedFeatureError struct {
	// Name of the feature, e.g. "tcx" or "sch_fq qdisc".
	Name string
	// MinimumVersion is the first mainline kernel with the feature, e.g.
	// "6.6", or empty where the feature is a build option rather than a
	// version (a module that was not built).
	MinimumVersion string
}

func (e *UnsupportedFeatureError) Error() string {
	if e.MinimumVersion == "" {
		return fmt.Sprintf("%s not supported by this kernel", e.Name)
	}
	return fmt.Sprintf("%s requires Linux %s or newer", e.Name, e.MinimumVersion)
}

// Is makes errors.Is(err, nodeplane.ErrNotSupported) true.
func (e *UnsupportedFeatureError) Is(target error) bool {
	return target == nodeplane.ErrNotSupported
}

// Probe runs a feature test once and remembers a definitive answer.
//
// The test function returns nil when the feature is present, an error
// wrapping [nodeplane.ErrNotSupported] or [ebpf.ErrNotSupported] when it is
// absent, and any other error when it could not tell (no permission, out of
// memory). Only the first two are cached; an inconclusive probe runs again
// on the next call.
type Probe struct {
	name       string
	minVersion string
	test       func() error

	mu     sync.Mutex
	done   bool
	result error
}

// NewProbe returns a probe for the named feature.
func NewProbe(name, minVersion string, test func() error) *Probe {
	return &Probe{name: name, minVersion: minVersion, test: test}
}

// Result runs the probe if it has no definitive answer yet and returns it.
func (p *Probe) Result() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return p.result
	}

	err := p.test()
	switch {
	case err == nil:
		p.done, p.result = true, nil
	case errors.Is(err, nodeplane.ErrNotSupported), errors.Is(err, ebpf.ErrNotSupported):
		p.done = true
		p.result = &UnsupportedFeatureError{Name: p.name, MinimumVersion: p.minVersion}
	default:
		return fmt.Errorf("probe %s: %w", p.name, err)
	}
	return p.result
}
