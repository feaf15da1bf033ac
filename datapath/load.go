package datapath

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cilium/ebpf"
)

// sharedMaps are the maps every endpoint's programs use. They are created
// (or opened from their pins) once per Datapath.
type sharedMaps struct {
	endpoints  *ebpf.Map
	ipcache    *ebpf.Map
	conntrack  *ebpf.Map
	frags      *ebpf.Map
	policy     *ebpf.Map
	counters   *ebpf.Map
	eventsLost *ebpf.Map
	events     *ebpf.Map
	trace      *ebpf.Map // np_trace_config
	edt        *ebpf.Map // np_edt, endpoint ID -> EDT state
	overlay    *ebpf.Map // np_overlay_config (overlay.go)
	nat        *ebpf.Map // np_nat, np_nat_config, np_nat_exclude (masquerade.go)
	natConfig  *ebpf.Map
	natExclude *ebpf.Map
	// records is Go's own map of endpoint records (record.go); the
	// programs do not use it.
	records *ebpf.Map
}

func (m *sharedMaps) byName() map[string]**ebpf.Map {
	return map[string]**ebpf.Map{
		datapathMapNpEndpoints:     &m.endpoints,
		datapathMapNpIpcache:       &m.ipcache,
		datapathMapNpConntrack:     &m.conntrack,
		datapathMapNpFrags:         &m.frags,
		datapathMapNpPolicy:        &m.policy,
		datapathMapNpCounters:      &m.counters,
		datapathMapNpEventsLost:    &m.eventsLost,
		datapathMapNpEvents:        &m.events,
		datapathMapNpTraceConfig:   &m.trace,
		datapathMapNpEdt:           &m.edt,
		datapathMapNpOverlayConfig: &m.overlay,
		datapathMapNpNat:           &m.nat,
		datapathMapNpNatConfig:     &m.natConfig,
		datapathMapNpNatExclude:    &m.natExclude,
	}
}

func (m *sharedMaps) replacements() map[string]*ebpf.Map {
	r := make(map[string]*ebpf.Map)
	for name, p := range m.byName() {
		r[name] = *p
	}
	return r
}

// all returns every map by name, the records map included.
func (m *sharedMaps) all() map[string]**ebpf.Map {
	all := m.byName()
	all[recordsMapName] = &m.records
	return all
}

func (m *sharedMaps) close() error {
	var errs []error
	for _, p := range m.all() {
		if *p != nil {
			errs = append(errs, (*p).Close())
			*p = nil
		}
	}
	return errors.Join(errs...)
}

// loadSpec returns the datapath's collection spec sized and configured by
// cfg: map sizes, pinning, conntrack lifetimes.
func loadSpec(cfg Config) (*ebpf.CollectionSpec, error) {
	spec, err := loadDatapath()
	if err != nil {
		return nil, err
	}
	if cfg.Programs != nil {
		if err := checkBuild(spec, cfg.Programs); err != nil {
			return nil, err
		}
		spec = cfg.Programs.Copy()
	}
	return configureSpec(spec, cfg)
}

// configureSpec sizes and configures spec, a copy of an object compatible
// with the embedded one, by cfg.
func configureSpec(spec *ebpf.CollectionSpec, cfg Config) (*ebpf.CollectionSpec, error) {
	sizes := map[string]int{
		datapathMapNpEndpoints: 2 * cfg.MaxEndpoints,
		datapathMapNpIpcache:   cfg.IPCacheMaxEntries,
		datapathMapNpConntrack: cfg.ConntrackMaxEntries,
		datapathMapNpFrags:     cfg.FragmentsMaxEntries,
		datapathMapNpPolicy:    cfg.MaxEndpoints,
		datapathMapNpEvents:    cfg.EventsBufferSize,
		datapathMapNpEdt:       cfg.MaxEndpoints,
		datapathMapNpNat:       cfg.NATMaxEntries,
	}
	for name, n := range sizes {
		spec.Maps[name].MaxEntries = uint32(n)
	}
	spec.Maps[datapathMapNpPolicy].InnerMap.MaxEntries = uint32(cfg.PolicyMapMaxEntries)
	for name := range (&sharedMaps{}).byName() {
		if cfg.BPFFSDir == "" {
			spec.Maps[name].Pinning = ebpf.PinNone
		}
	}

	for name, d := range map[string]time.Duration{
		datapathVarNpCtLifetimeTcp:    cfg.TCPLifetime,
		datapathVarNpCtLifetimeNontcp: cfg.NonTCPLifetime,
		datapathVarNpCtLifetimeSyn:    cfg.SYNLifetime,
		datapathVarNpCtLifetimeClose:  cfg.CloseLifetime,
	} {
		if err := spec.Variables[name].Set(uint32(d / time.Second)); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	return spec, nil
}

// createSharedMaps creates the shared maps, or opens them from their pins
// in cfg.BPFFSDir. A pinned map whose type, sizes or flags differ from
// cfg's is an error: the caller asked for something the pin is not.
func createSharedMaps(spec *ebpf.CollectionSpec, cfg Config) (*sharedMaps, error) {
	if cfg.BPFFSDir != "" {
		if err := migrateConntrackPin(spec.Maps[datapathMapNpConntrack], cfg.BPFFSDir); err != nil {
			return nil, err
		}
		if err := migrateNATPins(spec, cfg.BPFFSDir); err != nil {
			return nil, err
		}
		if err := migrateCountersPin(spec.Maps[datapathMapNpCounters], cfg.BPFFSDir); err != nil {
			return nil, err
		}
	}
	m := &sharedMaps{}
	maps := make(map[string]*ebpf.MapSpec)
	for name := range m.byName() {
		maps[name] = spec.Maps[name]
	}
	maps[recordsMapName] = recordsMapSpec(cfg.MaxEndpoints)
	if cfg.BPFFSDir == "" {
		maps[recordsMapName].Pinning = ebpf.PinNone
	}
	coll, err := ebpf.NewCollectionWithOptions(&ebpf.CollectionSpec{Maps: maps, Types: spec.Types},
		ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.BPFFSDir}})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("pinned maps in %s do not match the configuration: %w", cfg.BPFFSDir, err)
		}
		return nil, fmt.Errorf("create maps: %w", err)
	}
	defer coll.Close()
	for name, p := range m.all() {
		*p = coll.DetachMap(name)
	}
	return m, nil
}

// endpointPrograms are one endpoint's copies of the programs.
type endpointPrograms struct {
	from, to *ebpf.Program
}

func (p *endpointPrograms) close() error {
	var errs []error
	for _, prog := range []**ebpf.Program{&p.from, &p.to} {
		if *prog != nil {
			errs = append(errs, (*prog).Close())
			*prog = nil
		}
	}
	return errors.Join(errs...)
}

// loadEndpointPrograms loads the programs for one endpoint: its ID and
// addresses are load-time constants, the maps are the shared ones.
func loadEndpointPrograms(spec *ebpf.CollectionSpec, maps *sharedMaps, cfg EndpointConfig) (*endpointPrograms, error) {
	id := cfg.ID
	spec = spec.Copy()
	// The tunnel device's and the external interface's programs are
	// loaded once per node (overlay.go, masquerade.go).
	onlyPrograms(spec, datapathProgNpFromEndpoint, datapathProgNpToEndpoint)
	// Addresses go in as bytes: they stay in network byte order.
	var v4 [4]byte
	var v6 [16]byte
	if cfg.IPv4.IsValid() {
		v4 = cfg.IPv4.As4()
	}
	if cfg.IPv6.IsValid() {
		v6 = cfg.IPv6.As16()
	}
	for name, v := range map[string]any{
		datapathVarNpEndpointId:   uint16(id),
		datapathVarNpEndpointIpv4: v4,
		datapathVarNpEndpointIpv6: v6,
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("endpoint %d: set %s: %w", id, name, err)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: maps.replacements()})
	if err != nil {
		return nil, fmt.Errorf("load programs for endpoint %d: %w", id, err)
	}
	defer coll.Close()
	return &endpointPrograms{
		from: coll.DetachProgram(datapathProgNpFromEndpoint),
		to:   coll.DetachProgram(datapathProgNpToEndpoint),
	}, nil
}

// onlyPrograms removes every program but the named ones from spec, and
// the maps of this load only (not the shared ones, which are replaced)
// that no remaining program uses, so that loading the endpoint programs
// creates no NAT scratch or drop counters, for example.
func onlyPrograms(spec *ebpf.CollectionSpec, names ...string) {
	for name := range spec.Programs {
		if !slices.Contains(names, name) {
			delete(spec.Programs, name)
		}
	}
	used := map[string]bool{}
	for _, p := range spec.Programs {
		for _, ins := range p.Instructions {
			if ref := ins.Reference(); ref != "" {
				used[ref] = true
			}
		}
	}
	shared := (&sharedMaps{}).byName()
	for name := range spec.Maps {
		if _, ok := shared[name]; !ok && !used[name] {
			delete(spec.Maps, name)
		}
	}
}
