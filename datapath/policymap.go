package datapath

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/nodeplane/nodeplane"

	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// PolicyMap is an endpoint's policy map: the entries [mapstate.Lookup]
// decides on, in the kernel. It is valid until its endpoint is deleted;
// its methods are safe for concurrent use.
type PolicyMap struct {
	endpoint EndpointID

	mu     sync.RWMutex
	m      *ebpf.Map
	closed bool
}

func newPolicyMap(inner *ebpf.MapSpec, id EndpointID) (*PolicyMap, error) {
	spec := inner.Copy()
	spec.Name = fmt.Sprintf("np_policy_%d", id)
	m, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, fmt.Errorf("endpoint %d: create policy map: %w", id, err)
	}
	return &PolicyMap{endpoint: id, m: m}, nil
}

// Endpoint returns the endpoint the map belongs to.
func (p *PolicyMap) Endpoint() EndpointID { return p.endpoint }

// Update adds or replaces one entry.
func (p *PolicyMap) Update(k mapstate.Key, e mapstate.Entry) error {
	if err := k.Validate(); err != nil {
		return err
	}
	return p.with(func(m *ebpf.Map) error {
		if err := m.Update(rawPolicyKey(k), rawPolicyEntry(e, k), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("policy map of endpoint %d: update %v: %w", p.endpoint, k, err)
		}
		return nil
	})
}

// Delete removes one entry. Deleting a key that is not in the map returns
// an error wrapping [ebpf.ErrKeyNotExist].
func (p *PolicyMap) Delete(k mapstate.Key) error {
	if err := k.Validate(); err != nil {
		return err
	}
	return p.with(func(m *ebpf.Map) error {
		if err := m.Delete(rawPolicyKey(k)); err != nil {
			return fmt.Errorf("policy map of endpoint %d: delete %v: %w", p.endpoint, k, err)
		}
		return nil
	})
}

// Apply changes the map by a delta: it writes every entry of upserts and
// removes every key of deletes, touching nothing else. Upserts go first,
// so traffic that both the old and the new policy allow by different
// entries is never without an entry. Keys to delete that are not in the
// map are skipped.
//
// Apply validates the whole delta before it changes anything; a key that is
// invalid or in both upserts and deletes is an error and the map stays as
// it was. If the kernel refuses a change (the map is full), Apply restores
// the entries it had changed and returns the error.
func (p *PolicyMap) Apply(upserts mapstate.State, deletes []mapstate.Key) error {
	for k := range upserts {
		if err := k.Validate(); err != nil {
			return err
		}
	}
	for _, k := range deletes {
		if err := k.Validate(); err != nil {
			return err
		}
		if _, ok := upserts[k]; ok {
			return fmt.Errorf("policy key %v: %w: both upserted and deleted", k, mapstate.ErrInvalidKey)
		}
	}

	return p.with(func(m *ebpf.Map) error {
		// undo holds, for every key changed so far, what it held before.
		type prior struct {
			key     policyKey
			entry   policyEntry
			existed bool
		}
		var undo []prior
		rollback := func(cause error) error {
			var errs []error
			for i := len(undo) - 1; i >= 0; i-- {
				u := undo[i]
				var err error
				if u.existed {
					err = m.Update(u.key, u.entry, ebpf.UpdateAny)
				} else {
					err = m.Delete(u.key)
				}
				if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					errs = append(errs, err)
				}
			}
			if len(errs) > 0 {
				return fmt.Errorf("policy map of endpoint %d: %w (and restoring it failed: %w)", p.endpoint, cause, errors.Join(errs...))
			}
			return fmt.Errorf("policy map of endpoint %d: %w", p.endpoint, cause)
		}
		lookup := func(k policyKey) (prior, error) {
			u := prior{key: k}
			err := m.Lookup(k, &u.entry)
			switch {
			case err == nil:
				u.existed = true
			case !errors.Is(err, ebpf.ErrKeyNotExist):
				return u, err
			}
			return u, nil
		}

		for k, e := range upserts {
			rk := rawPolicyKey(k)
			u, err := lookup(rk)
			if err != nil {
				return rollback(fmt.Errorf("read %v: %w", k, err))
			}
			if err := m.Update(rk, rawPolicyEntry(e, k), ebpf.UpdateAny); err != nil {
				return rollback(fmt.Errorf("update %v: %w", k, err))
			}
			undo = append(undo, u)
		}
		for _, k := range deletes {
			rk := rawPolicyKey(k)
			u, err := lookup(rk)
			if err != nil {
				return rollback(fmt.Errorf("read %v: %w", k, err))
			}
			if !u.existed {
				continue
			}
			if err := m.Delete(rk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return rollback(fmt.Errorf("delete %v: %w", k, err))
			}
			undo = append(undo, u)
		}
		return nil
	})
}

// Dump returns every entry of the map.
func (p *PolicyMap) Dump() (mapstate.State, error) {
	out := make(mapstate.State)
	err := p.with(func(m *ebpf.Map) error {
		var (
			k policyKey
			e policyEntry
		)
		it := m.Iterate()
		for it.Next(&k, &e) {
			pk, err := k.typed()
			if err != nil {
				return fmt.Errorf("policy map of endpoint %d: %w", p.endpoint, err)
			}
			out[pk] = e.typed()
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("policy map of endpoint %d: dump: %w", p.endpoint, err)
		}
		return nil
	})
	return out, err
}

func (p *PolicyMap) with(fn func(*ebpf.Map) error) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return fmt.Errorf("policy map of endpoint %d: %w", p.endpoint, nodeplane.ErrClosed)
	}
	return fn(p.m)
}

func (p *PolicyMap) close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	return p.m.Close()
}
