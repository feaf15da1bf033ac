package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
)

// selectorCache evaluates each distinct selector of the policies once
// against every known identity and keeps the result up to date as
// identities come and go: adding an identity costs one match per cached
// selector, not a recompilation of the rules.
//
// Selectors are shared by key (their canonical form): a thousand rules that
// select app=web hold one cached selector. A selectorCache is safe for
// concurrent use.
type selectorCache struct {
	mu         sync.RWMutex
	identities map[identity.ID]identity.Labels
	selectors  map[string]*cachedSelector
	index      labelIndex
}

// newSelectorCache returns an empty cache.
func newSelectorCache() *selectorCache {
	return &selectorCache{
		identities: map[identity.ID]identity.Labels{},
		selectors:  map[string]*cachedSelector{},
		index:      newLabelIndex(),
	}
}

type selectorKind uint8

const (
	selLabels selectorKind = iota
	selCIDR
	selFQDN
)

// selectorSpec is what a cached selector is built from.
type selectorSpec struct {
	kind   selectorKind
	labels identity.LabelSelector
	cidr   netip.Prefix
	except []netip.Prefix
	stack  nodeplane.StackMode
	fqdn   FQDNSelector
}

// cachedSelector is one selector and the identities it selects.
type cachedSelector struct {
	key  string
	desc string // human form for traces
	// sel is the label selector (for CIDR selectors: the cidr label and
	// the except labels).
	sel      identity.Selector
	kind     selectorKind
	wildcard bool
	// spec is what sel was compiled from, and cidr and except the
	// prefixes of a CIDR selector: traces explain a miss requirement by
	// requirement (nearmiss.go).
	spec   identity.LabelSelector
	cidr   netip.Prefix
	except []netip.Prefix
	// fqdnLabel is the label of the identities an FQDN selector selects.
	fqdnLabel identity.Label
	// candidates names an In requirement the index can answer: only
	// identities with one of these labels can match.
	candidates []indexKey
	selected   map[identity.ID]struct{}
	refs       int
}

// selectorRef is a counted reference to a cached selector.
type selectorRef struct {
	cs *cachedSelector
}

func (r *selectorRef) String() string { return r.cs.desc }

// matches reports whether the selector selects a label set, without the
// cache: the definition the cache's selections must agree with.
func (cs *cachedSelector) matches(ls identity.Labels) bool {
	switch cs.kind {
	case selFQDN:
		// Names resolve to identities through a DNS proxy only: the
		// engine gives each address a DNS answer gave to a matching name
		// an identity with this selector's fqdn label (Cilium's
		// FQDNSelector.IdentityLabel), until the answer's TTL runs out.
		return ls.Has(cs.fqdnLabel)
	case selCIDR:
		// Cilium's CIDRSelector only selects identities outside the
		// cluster: those with a world label.
		if !hasWorldLabel(ls) {
			return false
		}
	}
	return cs.sel.Matches(ls)
}

func hasWorldLabel(ls identity.Labels) bool {
	for _, name := range []string{identity.LabelWorld, identity.LabelWorldIPv4, identity.LabelWorldIPv6} {
		if l, ok := ls.Get(name); ok && l.Source == identity.SourceReserved {
			return true
		}
	}
	return false
}

// compile builds the selector of a spec and its cache key.
func compileSelector(spec selectorSpec) (*cachedSelector, error) {
	cs := &cachedSelector{kind: spec.kind}
	switch spec.kind {
	case selLabels:
		sel, err := identity.NewSelector(spec.labels)
		if err != nil {
			return nil, err
		}
		cs.sel, cs.spec = sel, spec.labels
		cs.key = "labels:" + sel.String()
		cs.desc = sel.String()
		cs.wildcard = sel.IsWildcard()
		cs.candidates = candidateKeys(spec.labels)
	case selCIDR:
		req, err := cidrRequirement(spec.cidr, spec.stack, identity.SelectorOpExists)
		if err != nil {
			return nil, err
		}
		ls := identity.LabelSelector{MatchExpressions: []identity.SelectorRequirement{req}}
		desc := spec.cidr.String()
		for _, e := range spec.except {
			r, err := cidrRequirement(e, spec.stack, identity.SelectorOpDoesNotExist)
			if err != nil {
				return nil, err
			}
			ls.MatchExpressions = append(ls.MatchExpressions, r)
			desc += " except " + e.String()
		}
		sel, err := identity.NewSelector(ls)
		if err != nil {
			return nil, err
		}
		cs.sel, cs.spec = sel, ls
		cs.cidr, cs.except = spec.cidr, spec.except
		cs.key = "cidr:" + sel.String()
		cs.desc = "cidr " + desc
	case selFQDN:
		cs.fqdnLabel = identity.Label{Source: identity.SourceFQDN, Key: spec.fqdn.selector().LabelKey()}
		cs.key = fmt.Sprintf("fqdn:%s|%s", spec.fqdn.MatchName, spec.fqdn.MatchPattern)
		if spec.fqdn.MatchName != "" {
			cs.desc = "fqdn " + spec.fqdn.MatchName
		} else {
			cs.desc = "fqdn pattern " + spec.fqdn.MatchPattern
		}
	}
	return cs, nil
}

// cidrRequirement is the requirement on the label that names a prefix:
// its cidr label, or the world label of its family for a zero-length
// prefix (Cilium's IPStringToLabel).
func cidrRequirement(p netip.Prefix, stack nodeplane.StackMode, op identity.SelectorOperator) (identity.SelectorRequirement, error) {
	var l identity.Label
	if p.Bits() == 0 {
		l = identity.WorldLabel(p.Addr(), stack)
	} else {
		var err error
		if l, err = identity.CIDRLabel(p); err != nil {
			return identity.SelectorRequirement{}, err
		}
	}
	return identity.SelectorRequirement{Key: l.Source + ":" + l.Key, Operator: op}, nil
}

// acquire returns a reference to the cached selector for spec, creating
// and evaluating it if it is new.
func (c *selectorCache) acquire(spec selectorSpec) (*selectorRef, error) {
	cs, err := compileSelector(spec)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.selectors[cs.key]; ok {
		old.refs++
		return &selectorRef{old}, nil
	}
	cs.refs = 1
	cs.selected = map[identity.ID]struct{}{}
	c.evaluateLocked(cs)
	c.selectors[cs.key] = cs
	return &selectorRef{cs}, nil
}

// retain returns another reference to the same selector.
func (c *selectorCache) retain(r *selectorRef) *selectorRef {
	c.mu.Lock()
	r.cs.refs++
	c.mu.Unlock()
	return &selectorRef{r.cs}
}

func (c *selectorCache) release(r *selectorRef) {
	if r == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r.cs.refs--
	if r.cs.refs == 0 {
		delete(c.selectors, r.cs.key)
	}
}

func (c *selectorCache) releaseEntries(entries []*entry) {
	for _, e := range entries {
		c.release(e.subject)
		for _, p := range e.peers {
			c.release(p)
		}
	}
}

// evaluateLocked computes the selections of a new selector, using the
// label index to skip identities that cannot match.
func (c *selectorCache) evaluateLocked(cs *cachedSelector) {
	if cs.kind == selFQDN {
		for id := range c.index.byLabel[indexKey{cs.fqdnLabel.Key, ""}] {
			if cs.matches(c.identities[id]) {
				cs.selected[id] = struct{}{}
			}
		}
		return
	}
	if cs.kind == selCIDR {
		// Only identities with a world label can match.
		for _, name := range []string{identity.LabelWorld, identity.LabelWorldIPv4, identity.LabelWorldIPv6} {
			for id := range c.index.byLabel[indexKey{name, ""}] {
				if cs.matches(c.identities[id]) {
					cs.selected[id] = struct{}{}
				}
			}
		}
		return
	}
	if cands, ok := c.index.candidates(cs.candidates); ok {
		for _, id := range cands {
			if cs.matches(c.identities[id]) {
				cs.selected[id] = struct{}{}
			}
		}
		return
	}
	for id, ls := range c.identities {
		if cs.matches(ls) {
			cs.selected[id] = struct{}{}
		}
	}
}

// selects reports whether the cached selector selects the identity.
func (c *selectorCache) selects(r *selectorRef, id identity.ID) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	_, ok := r.cs.selected[id]
	return ok
}

// selections returns the identities a selector selects, sorted.
func (c *selectorCache) selections(r *selectorRef) []identity.ID {
	c.mu.RLock()
	defer c.mu.RUnlock()
	ids := make([]identity.ID, 0, len(r.cs.selected))
	for id := range r.cs.selected {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Labels returns the labels of a known identity.
func (c *selectorCache) Labels(id identity.ID) (identity.Labels, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	ls, ok := c.identities[id]
	return ls, ok
}

// Identities returns the number of known identities.
func (c *selectorCache) Identities() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.identities)
}

// Selectors returns the number of distinct cached selectors.
func (c *selectorCache) Selectors() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.selectors)
}

// selectionChange is what an identity update did to one selector.
type selectionChange struct {
	cs      *cachedSelector
	added   []identity.ID
	removed []identity.ID
}

// updateIdentities adds and removes identities and updates every cached
// selector's selections. Adding an identity that is already known with
// other labels replaces its labels.
func (c *selectorCache) updateIdentities(added []identity.Identity, removed []identity.ID) {
	c.update(added, removed)
}

// update applies an identity change and reports, per selector, which
// identities it gained and lost.
func (c *selectorCache) update(added []identity.Identity, removed []identity.ID) []selectionChange {
	c.mu.Lock()
	defer c.mu.Unlock()
	changes := map[*cachedSelector]*selectionChange{}
	change := func(cs *cachedSelector) *selectionChange {
		ch := changes[cs]
		if ch == nil {
			ch = &selectionChange{cs: cs}
			changes[cs] = ch
		}
		return ch
	}
	drop := func(id identity.ID) {
		ls, ok := c.identities[id]
		if !ok {
			return
		}
		delete(c.identities, id)
		c.index.remove(id, ls)
		for _, cs := range c.selectors {
			if _, ok := cs.selected[id]; ok {
				delete(cs.selected, id)
				ch := change(cs)
				ch.removed = append(ch.removed, id)
			}
		}
	}
	for _, id := range removed {
		drop(id)
	}
	for _, ident := range added {
		if old, ok := c.identities[ident.ID]; ok {
			if old == ident.Labels {
				continue
			}
			drop(ident.ID)
		}
		c.identities[ident.ID] = ident.Labels
		c.index.add(ident.ID, ident.Labels)
		for _, cs := range c.selectors {
			if cs.matches(ident.Labels) {
				cs.selected[ident.ID] = struct{}{}
				ch := change(cs)
				ch.added = append(ch.added, ident.ID)
			}
		}
	}
	out := make([]selectionChange, 0, len(changes))
	for _, ch := range changes {
		out = append(out, *ch)
	}
	return out
}
