package lb

import (
	"errors"
	"testing"

	"github.com/nodeplane/nodeplane/lb/maglev"
)

// TestNewRefusesBadMaglevConfig: a Maglev table size or seed New cannot use
// is an ErrInvalidConfig that also names the maglev error. New checks the
// configuration before it touches the kernel, so this needs no privilege.
func TestNewRefusesBadMaglevConfig(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg  Config
		want error
	}{
		"table size": {Config{Cgroup: "/sys/fs/cgroup", MaglevTableSize: 1000}, maglev.ErrTableSize},
		"seed":       {Config{Cgroup: "/sys/fs/cgroup", MaglevHashSeed: "not base64!"}, maglev.ErrHashSeed},
	} {
		lb, err := New(tc.cfg)
		if err == nil {
			lb.Close()
		}
		if !errors.Is(err, ErrInvalidConfig) || !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want ErrInvalidConfig and %v", name, err, tc.want)
		}
	}
}
