package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane"
)

// Upgrade replaces the programs of every endpoint with those of spec, a
// new build of the datapath's BPF object (as [Config].Programs describes
// it), while traffic flows: each hook's program is swapped in one step (a
// tcx link update, or a cls_bpf filter replaced in place), so every packet
// meets the old program or the new one, never none. The maps stay, with
// their contents: established connections, policy, ipcache and counters
// carry over. Endpoints added later get spec's programs too.
//
// The endpoints' programs are all loaded before the first is swapped in,
// so an object the verifier refuses changes nothing. An error while
// swapping leaves every hook with its old or its new program, enforcing
// either way; Upgrade can be called again.
//
// An upgrade across processes is a restart instead: close a pinning
// Datapath and open one with the new build (Config.Programs, or a new
// binary's embedded object), which adopts the endpoints the same way.
//
// Upgrade refuses, changing nothing, while an Overlay or Masquerade is
// attached: their programs are per node and are upgraded by closing and
// attaching them again.
func (d *Datapath) Upgrade(spec *ebpf.CollectionSpec) error {
	if spec == nil {
		return fmt.Errorf("upgrade: %w: no object", ErrInvalidConfig)
	}
	embedded, err := loadDatapath()
	if err != nil {
		return err
	}
	if err := checkBuild(embedded, spec); err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	next, err := configureSpec(spec.Copy(), d.cfg)
	if err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		return fmt.Errorf("upgrade: %w", nodeplane.ErrClosed)
	case d.overlayOn || d.masqOn:
		return fmt.Errorf("upgrade: %w while an Overlay or Masquerade is attached: close it, upgrade, attach it again", nodeplane.ErrNotSupported)
	}
	eps := make([]*Endpoint, 0, len(d.endpoints))
	loaded := make([]*endpointPrograms, 0, len(d.endpoints))
	defer func() {
		for _, p := range loaded {
			if p != nil {
				_ = p.close()
			}
		}
	}()
	for _, ep := range d.endpoints {
		progs, err := loadEndpointPrograms(next, d.maps, ep.cfg)
		if err != nil {
			return fmt.Errorf("upgrade: %w", err)
		}
		eps = append(eps, ep)
		loaded = append(loaded, progs)
	}
	var errs []error
	for i, ep := range eps {
		errs = append(errs, ep.swapPrograms(loaded[i]))
		loaded[i] = nil
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	d.spec = next
	return nil
}

// swapPrograms attaches progs in place of the endpoint's programs, hook by
// hook, and keeps what ends up attached; it takes ownership of progs.
func (ep *Endpoint) swapPrograms(progs *endpointPrograms) error {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.deleted {
		return progs.close()
	}
	old := ep.progs
	var errs []error
	// Attachments are in hook order: from-endpoint, then to-endpoint.
	hooks := [...]struct {
		name       string
		slot, next **ebpf.Program
	}{
		{datapathProgNpFromEndpoint, &old.from, &progs.from},
		{datapathProgNpToEndpoint, &old.to, &progs.to},
	}
	for i, h := range hooks {
		slot, next := h.slot, h.next
		if i < len(ep.attachments) {
			if err := ep.attachments[i].replace(*next); err != nil {
				errs = append(errs, fmt.Errorf("endpoint %d: %s: %w", ep.cfg.ID, h.name, err))
				continue // the old program stays attached, and ours
			}
		}
		// The attachment holds its own reference to the program it runs.
		errs = append(errs, (*slot).Close())
		*slot, *next = *next, nil
	}
	errs = append(errs, progs.close())
	return errors.Join(errs...)
}

// checkBuild checks that got, another build of the datapath's object, has
// every map and program of want, the embedded build, with the same shape,
// so that its programs can run on the maps want's programs made.
func checkBuild(want, got *ebpf.CollectionSpec) error {
	for name, w := range want.Maps {
		g, ok := got.Maps[name]
		if !ok {
			return fmt.Errorf("%w: the object has no map %s", ErrInvalidConfig, name)
		}
		if err := sameMap(name, w, g); err != nil {
			return err
		}
		if (w.InnerMap == nil) != (g.InnerMap == nil) {
			return fmt.Errorf("%w: map %s: inner map differs", ErrInvalidConfig, name)
		}
		if w.InnerMap != nil {
			if err := sameMap(name+" (inner)", w.InnerMap, g.InnerMap); err != nil {
				return err
			}
		}
	}
	for name, w := range want.Programs {
		g, ok := got.Programs[name]
		if !ok {
			return fmt.Errorf("%w: the object has no program %s", ErrInvalidConfig, name)
		}
		if g.Type != w.Type {
			return fmt.Errorf("%w: program %s is a %v, not a %v", ErrInvalidConfig, name, g.Type, w.Type)
		}
	}
	for name, w := range want.Variables {
		g, ok := got.Variables[name]
		if !ok {
			return fmt.Errorf("%w: the object has no variable %s", ErrInvalidConfig, name)
		}
		if g.Size() != w.Size() {
			return fmt.Errorf("%w: variable %s has %d bytes, not %d", ErrInvalidConfig, name, g.Size(), w.Size())
		}
	}
	return nil
}

func sameMap(name string, want, got *ebpf.MapSpec) error {
	if got.Type != want.Type || got.KeySize != want.KeySize || got.ValueSize != want.ValueSize || got.Flags != want.Flags {
		return fmt.Errorf("%w: map %s is %v key %d value %d flags %#x, not %v key %d value %d flags %#x",
			ErrInvalidConfig, name, got.Type, got.KeySize, got.ValueSize, got.Flags,
			want.Type, want.KeySize, want.ValueSize, want.Flags)
	}
	return nil
}
