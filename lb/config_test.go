package lb

import (
	"errors"
	"testing"
)

// TestConfigErrorsWrapErrInvalidConfig: every configuration New refuses up
// front is an ErrInvalidConfig, so a caller can tell it from a kernel
// failure.
func TestConfigErrorsWrapErrInvalidConfig(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no cgroup":         {},
		"too many backends": {Cgroup: "/sys/fs/cgroup", BackendEntries: 1<<30 + 1},
	} {
		if _, err := cfg.withDefaults(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
	if _, err := (Config{Cgroup: "/sys/fs/cgroup"}).withDefaults(); err != nil {
		t.Errorf("a valid config: %v", err)
	}
}
