//go:build !unix

package statefile

import (
	"context"
	"fmt"
	"os"

	"github.com/nodeplane/nodeplane"
)

func flock(context.Context, *os.File, bool) error {
	return fmt.Errorf("flock: %w", nodeplane.ErrNotSupported)
}
