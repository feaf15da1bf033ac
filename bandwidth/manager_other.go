//go:build !linux

package bandwidth

import (
	"fmt"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath"
)

// Manager applies endpoints' limits; only Linux has one.
type Manager struct{}

// New fails: bandwidth management needs Linux.
func New(Config) (*Manager, error) {
	return nil, fmt.Errorf("bandwidth manager: %w", nodeplane.ErrNotSupported)
}

// Mechanism returns MechanismAuto.
func (*Manager) Mechanism() Mechanism { return MechanismAuto }

// Set fails: bandwidth management needs Linux.
func (*Manager) Set(*datapath.Endpoint, Limits) error { return nodeplane.ErrNotSupported }

// Clear fails: bandwidth management needs Linux.
func (*Manager) Clear(*datapath.Endpoint) error { return nodeplane.ErrNotSupported }

// SetPodEgress fails: bandwidth management needs Linux.
func (*Manager) SetPodEgress(string, string, Rate) error { return nodeplane.ErrNotSupported }

// Close does nothing.
func (*Manager) Close() error { return nil }

// DeviceStats fails: bandwidth management needs Linux.
func (*Manager) DeviceStats() ([]DeviceStats, error) { return nil, nodeplane.ErrNotSupported }
