//go:build !linux

package tcattach

import (
	"fmt"
	"runtime"

	"github.com/nodeplane/nodeplane"
)

// HaveTCX reports whether the kernel can attach programs with tcx links;
// never outside Linux.
func HaveTCX() error {
	return fmt.Errorf("tcx on %s: %w", runtime.GOOS, nodeplane.ErrNotSupported)
}
