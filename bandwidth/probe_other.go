//go:build !linux

package bandwidth

import (
	"fmt"

	"github.com/nodeplane/nodeplane"
)

// HaveEDT reports whether the kernel has the fq qdisc; only Linux does.
func HaveEDT() error { return fmt.Errorf("sch_fq qdisc: %w", nodeplane.ErrNotSupported) }

// HaveDeliveryTime reports whether the kernel keeps delivery-time
// timestamps; only Linux does.
func HaveDeliveryTime() error {
	return fmt.Errorf("delivery time timestamps: %w", nodeplane.ErrNotSupported)
}
