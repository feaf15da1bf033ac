//go:build !linux

package overlay

import (
	"fmt"

	"github.com/nodeplane/nodeplane"
)

// HaveGeneve reports that Geneve is not supported outside Linux.
func HaveGeneve() error { return fmt.Errorf("geneve: %w", nodeplane.ErrNotSupported) }

// Tunnel is the node's tunnel device; only Linux has one.
type Tunnel struct{ cfg TunnelConfig }

// NewTunnel fails with nodeplane.ErrNotSupported outside Linux.
func NewTunnel(cfg TunnelConfig) (*Tunnel, error) {
	return nil, fmt.Errorf("new tunnel: %w", nodeplane.ErrNotSupported)
}

func (t *Tunnel) Ifindex() int             { return 0 }
func (t *Tunnel) Name() string             { return t.cfg.Name }
func (t *Tunnel) Port() uint16             { return t.cfg.Port }
func (t *Tunnel) Protocol() TunnelProtocol { return t.cfg.Protocol }
func (t *Tunnel) PodMTU() int              { return t.cfg.podMTU() }
func (t *Tunnel) Adopted() bool            { return false }
func (t *Tunnel) Release() error           { return nil }
func (t *Tunnel) Close() error             { return nil }
