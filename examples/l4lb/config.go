package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/lb"
	"github.com/nodeplane/nodeplane/lb/maglev"
)

// fileConfig is the YAML file of `l4lb run`:
//
//	interface: eth0            # the external interface
//	mode: dnat                 # dnat (default), snat or dsr
//	snatAddresses: [10.1.0.1]  # snat: the node's source address, one per family
//	maglev:
//	  tableSize: 16381         # one of maglev.SupportedTableSizes (default 16381)
//	  seed: JLfvgnHc2kaSUFaI   # 12 bytes, standard base64 (default Cilium's)
//	services:
//	  - frontend: 10.99.0.1:80/TCP     # ADDR:PORT/PROTO, TCP or UDP; IPv6 as [ADDR]:PORT/PROTO
//	    algorithm: maglev              # maglev (default) or random
//	    externalTrafficPolicy: cluster # cluster (default) or local: no SNAT/DSR, backends see the client
//	    backends:
//	      - address: 10.2.0.2:8080
//	        weight: 100                # default 100
//	        state: active              # active (default) or terminating
type fileConfig struct {
	Interface     string   `yaml:"interface"`
	Mode          string   `yaml:"mode"`
	SNATAddresses []string `yaml:"snatAddresses"`
	Maglev        struct {
		TableSize uint   `yaml:"tableSize"`
		Seed      string `yaml:"seed"`
	} `yaml:"maglev"`
	Services []struct {
		Frontend              string `yaml:"frontend"`
		Algorithm             string `yaml:"algorithm"`
		ExternalTrafficPolicy string `yaml:"externalTrafficPolicy"`
		Backends              []struct {
			Address string  `yaml:"address"`
			Weight  *uint16 `yaml:"weight"`
			State   string  `yaml:"state"`
		} `yaml:"backends"`
	} `yaml:"services"`
}

// config is a validated fileConfig.
type config struct {
	Interface string
	NS        lb.NorthSouthConfig
	Services  map[lb.Frontend]serviceConfig
}

type serviceConfig struct {
	Service  lb.Service
	Backends []lb.Backend
}

func (s serviceConfig) equal(o serviceConfig) bool {
	return s.Service == o.Service && slices.Equal(s.Backends, o.Backends)
}

// parseConfig reads and validates a config file. Unknown fields are
// errors, so a typo does not silently drop a setting.
func parseConfig(r io.Reader) (*config, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var fc fileConfig
	if err := dec.Decode(&fc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty config")
		}
		return nil, err
	}
	cfg := &config{Interface: fc.Interface, Services: map[lb.Frontend]serviceConfig{}}
	if cfg.Interface == "" {
		return nil, errors.New("interface: required")
	}
	cfg.NS = lb.NorthSouthConfig{MaglevTableSize: fc.Maglev.TableSize, MaglevHashSeed: fc.Maglev.Seed}
	if fc.Maglev.TableSize == 0 {
		cfg.NS.MaglevTableSize = maglev.DefaultTableSize
	}
	if fc.Maglev.Seed == "" {
		cfg.NS.MaglevHashSeed = maglev.DefaultHashSeed
	}
	if _, err := parseTableSize(fmt.Sprint(cfg.NS.MaglevTableSize)); err != nil {
		return nil, fmt.Errorf("maglev.tableSize: %v", err)
	}
	if err := parseSeed(cfg.NS.MaglevHashSeed); err != nil {
		return nil, fmt.Errorf("maglev.seed: %v", err)
	}
	switch strings.ToLower(fc.Mode) {
	case "", "dnat":
		if len(fc.SNATAddresses) > 0 {
			return nil, errors.New("snatAddresses: only with mode snat")
		}
	case "snat":
		if len(fc.SNATAddresses) == 0 {
			return nil, errors.New("mode snat: snatAddresses required")
		}
		for i, a := range fc.SNATAddresses {
			addr, err := netip.ParseAddr(a)
			if err != nil {
				return nil, fmt.Errorf("snatAddresses[%d]: %v", i, err)
			}
			cfg.NS.SNATAddrs = append(cfg.NS.SNATAddrs, addr)
		}
	case "dsr":
		if len(fc.SNATAddresses) > 0 {
			return nil, errors.New("snatAddresses: only with mode snat")
		}
		cfg.NS.DSR = true
	default:
		return nil, fmt.Errorf("mode %q: want dnat, snat or dsr", fc.Mode)
	}

	for i, s := range fc.Services {
		where := fmt.Sprintf("services[%d]", i)
		fe, err := parseFrontend(s.Frontend)
		if err != nil {
			return nil, fmt.Errorf("%s.frontend %q: %v", where, s.Frontend, err)
		}
		if _, dup := cfg.Services[fe]; dup {
			return nil, fmt.Errorf("%s.frontend %s: listed twice", where, fe)
		}
		svc := lb.Service{Frontend: fe, Type: lb.LoadBalancer, Algorithm: lb.AlgorithmMaglev}
		switch strings.ToLower(s.Algorithm) {
		case "", "maglev":
		case "random":
			svc.Algorithm = lb.AlgorithmRandom
		default:
			return nil, fmt.Errorf("%s.algorithm %q: want maglev or random", where, s.Algorithm)
		}
		switch strings.ToLower(s.ExternalTrafficPolicy) {
		case "", "cluster":
		case "local":
			svc.ExternalTrafficLocal = true
		default:
			return nil, fmt.Errorf("%s.externalTrafficPolicy %q: want cluster or local", where, s.ExternalTrafficPolicy)
		}
		sc := serviceConfig{Service: svc}
		for j, b := range s.Backends {
			bwhere := fmt.Sprintf("%s.backends[%d]", where, j)
			ap, err := netip.ParseAddrPort(b.Address)
			if err != nil {
				return nil, fmt.Errorf("%s.address %q: %v", bwhere, b.Address, err)
			}
			be := lb.Backend{Addr: ap, Weight: lb.DefaultWeight}
			if b.Weight != nil {
				if *b.Weight == 0 {
					return nil, fmt.Errorf("%s.weight: 0 is not a weight; remove the backend or mark it terminating", bwhere)
				}
				be.Weight = *b.Weight
			}
			switch strings.ToLower(b.State) {
			case "", "active":
			case "terminating":
				be.State = lb.BackendTerminating
			default:
				return nil, fmt.Errorf("%s.state %q: want active or terminating", bwhere, b.State)
			}
			sc.Backends = append(sc.Backends, be)
		}
		cfg.Services[fe] = sc
	}
	return cfg, nil
}

// parseFrontend parses ADDR:PORT/PROTO with TCP or UDP.
func parseFrontend(s string) (lb.Frontend, error) {
	b, err := parseBackend(s)
	if err != nil {
		return lb.Frontend{}, err
	}
	if strings.Contains(s, "@") {
		return lb.Frontend{}, errors.New("a frontend has no weight")
	}
	if b.Proto != nodeplane.ProtoTCP && b.Proto != nodeplane.ProtoUDP {
		return lb.Frontend{}, errors.New("the protocol must be TCP or UDP")
	}
	return lb.Frontend{Addr: b.Addr, Protocol: b.Proto}, nil
}

// applier is what apply changes: a *lb.NorthSouth, or a fake in tests.
type applier interface {
	Upsert(lb.Service, []lb.Backend) error
	Delete(lb.Frontend) error
}

// apply moves the load balancer from old (nil at start) to cfg: changed
// and new services are upserted, vanished ones deleted, unchanged ones
// left alone, so their flows are not disturbed. Upsert keeps the flows of
// the backends that stay. It returns every error; what succeeded stays
// applied.
func apply(a applier, old, cfg *config) error {
	if old != nil {
		if old.Interface != cfg.Interface || !sameNS(old.NS, cfg.NS) {
			return errors.New("interface and maglev settings cannot change on reload; restart l4lb")
		}
	}
	var errs []error
	for _, fe := range sortedFrontends(cfg.Services) {
		sc := cfg.Services[fe]
		if old != nil {
			if o, ok := old.Services[fe]; ok && o.equal(sc) {
				continue
			}
		}
		if err := a.Upsert(sc.Service, sc.Backends); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", fe, err))
		}
	}
	if old != nil {
		for _, fe := range sortedFrontends(old.Services) {
			if _, ok := cfg.Services[fe]; !ok {
				if err := a.Delete(fe); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", fe, err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

func sortedFrontends(m map[lb.Frontend]serviceConfig) []lb.Frontend {
	out := make([]lb.Frontend, 0, len(m))
	for fe := range m {
		out = append(out, fe)
	}
	slices.SortFunc(out, func(a, b lb.Frontend) int { return strings.Compare(a.String(), b.String()) })
	return out
}

func sameNS(a, b lb.NorthSouthConfig) bool {
	return a.MaglevTableSize == b.MaglevTableSize && a.MaglevHashSeed == b.MaglevHashSeed && a.DSR == b.DSR && slices.Equal(a.SNATAddrs, b.SNATAddrs)
}
