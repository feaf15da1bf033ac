//go:build !linux

package overlay

import (
	"context"
	"fmt"

	"github.com/nodeplane/nodeplane"
)

// RouterConfig configures a [Router].
type RouterConfig struct {
	Registry  Registry
	LocalNode string
	NodeNetNS string
	Device    string
}

// Router is native routing; only Linux has it.
type Router struct{}

// NewRouter fails with nodeplane.ErrNotSupported outside Linux.
func NewRouter(cfg RouterConfig) (*Router, error) {
	return nil, fmt.Errorf("new router: %w", nodeplane.ErrNotSupported)
}

func (r *Router) Run(ctx context.Context) error { return nodeplane.ErrNotSupported }
func (r *Router) Flush() error                  { return nil }
func (r *Router) Close() error                  { return nil }
