package lb

import (
	"fmt"

	"github.com/nodeplane/nodeplane/lb/maglev"
)

// Config configures New. Zero fields take the documented defaults.
type Config struct {
	// Cgroup is the cgroup2 directory whose sockets are load balanced,
	// together with every cgroup below it. Required.
	Cgroup string

	// PinPath is a directory on a bpffs in which the maps are pinned. Maps
	// an earlier LB pinned there are reused and the services they hold are
	// restored, so translation state survives a restart of the program.
	// Empty: the maps live as long as the LB.
	PinPath string

	// ServiceEntries is the capacity of each services map (IPv4 and IPv6):
	// one entry per service plus one per active backend, and while a
	// service's backends change, its active backends once more. Default
	// 65536.
	ServiceEntries uint32
	// BackendEntries is the capacity of each backends map: one entry per
	// backend of every service. Default 65536.
	BackendEntries uint32
	// AffinityEntries is the capacity of each session-affinity map (least
	// recently used entries are evicted): one entry per client network
	// namespace and affinity service. Default 65536.
	AffinityEntries uint32
	// SocketEntries is the capacity of each reverse-translation map (least
	// recently used entries are evicted): one entry per socket and backend
	// it reached through a service. Default 262144.
	SocketEntries uint32

	// MaglevTableSize is the number of entries M of each Maglev lookup
	// table: one of Cilium's primes 251, 509, 1021, 2039, 4093, 8191, 16381,
	// 32749, 65521 or 131071. Default 16381.
	MaglevTableSize uint32
	// MaglevHashSeed is the cluster-wide Maglev seed in Cilium's format
	// (12 bytes, base64); every node must use the same. Default Cilium's.
	MaglevHashSeed string
}

const (
	defaultServiceEntries  = 65536
	defaultBackendEntries  = 65536
	defaultAffinityEntries = 65536
	defaultSocketEntries   = 262144
	defaultMaglevTableSize = maglev.DefaultTableSize
)

func (c Config) withDefaults() (Config, error) {
	if c.Cgroup == "" {
		return c, fmt.Errorf("%w: no cgroup", ErrInvalidConfig)
	}
	def := func(v *uint32, d uint32) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.ServiceEntries, defaultServiceEntries)
	def(&c.BackendEntries, defaultBackendEntries)
	def(&c.AffinityEntries, defaultAffinityEntries)
	def(&c.SocketEntries, defaultSocketEntries)
	def(&c.MaglevTableSize, defaultMaglevTableSize)
	if c.MaglevHashSeed == "" {
		c.MaglevHashSeed = maglev.DefaultHashSeed
	}
	// A backend ID is a u32 and the match map holds one entry per active
	// backend of either family.
	if c.BackendEntries > 1<<30 {
		return c, fmt.Errorf("%w: %d backend entries is more than %d", ErrInvalidConfig, c.BackendEntries, 1<<30)
	}
	return c, nil
}
