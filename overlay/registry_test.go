package overlay_test

import (
	"testing"

	"github.com/nodeplane/nodeplane/overlay"
	"github.com/nodeplane/nodeplane/overlay/internal/registrytest"
)

func TestLocalRegistry(t *testing.T) {
	registrytest.Run(t, func(t *testing.T) overlay.Registry {
		r := overlay.NewLocalRegistry()
		t.Cleanup(func() { r.Close() })
		return r
	})
}
