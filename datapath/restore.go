package datapath

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane/identity"
)

// RestoreReport says what [New] found in [Config].BPFFSDir: the endpoints
// that an earlier Datapath, closed or crashed, left installed there.
type RestoreReport struct {
	// Adopted are the endpoints that were intact, in ID order. They now
	// belong to this Datapath ([Datapath.Endpoint]) and run this build's
	// programs, swapped in without a moment unattached.
	Adopted []EndpointID
	// Repaired are the adopted endpoints that needed fixing, one note per
	// fix: a program attachment, the policy map (put back empty, so
	// denying) or an entry of the endpoints map had gone missing.
	Repaired []RestoreNote
	// Removed are the endpoints whose state was deleted, in ID order
	// within each cause: their interface is gone (the pod was deleted while
	// no Datapath ran), a process died while it added or deleted them, or
	// their state had no record. Their addresses and IDs are free.
	Removed []RestoreNote
}

// RestoreNote is what happened to one endpoint found in BPFFSDir.
type RestoreNote struct {
	ID EndpointID
	// IPv4, IPv6 and HostIfName are the endpoint's, where known.
	IPv4, IPv6 netip.Addr
	HostIfName string
	// Reason says why the endpoint was removed, or what was repaired.
	Reason string
}

func (r RestoreReport) clone() RestoreReport {
	return RestoreReport{
		Adopted:  slices.Clone(r.Adopted),
		Repaired: slices.Clone(r.Repaired),
		Removed:  slices.Clone(r.Removed),
	}
}

func noteFor(id EndpointID, rec endpointRecord, reason string) RestoreNote {
	n := RestoreNote{ID: id, HostIfName: rec.hostIfName(), Reason: reason}
	for _, a := range rec.addrs() {
		if a.Is4() {
			n.IPv4 = a
		} else {
			n.IPv6 = a
		}
	}
	return n
}

// restore adopts or removes every endpoint in the records map, then
// deletes what no adopted endpoint accounts for. It runs in New, before
// the Datapath is shared, with the BPFFSDir locked.
func (d *Datapath) restore() error {
	recs := make(map[EndpointID]endpointRecord)
	var (
		id  uint32
		rec endpointRecord
	)
	it := d.maps.records.Iterate()
	for it.Next(&id, &rec) {
		recs[EndpointID(id)] = rec
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read endpoint records: %w", err)
	}
	ids := make([]EndpointID, 0, len(recs))
	for id := range recs {
		ids = append(ids, id)
	}
	slices.Sort(ids)

	for _, id := range ids {
		rec := recs[id]
		// Nothing is touched on the word of a record this build cannot
		// read: an older binary after a newer one must not tear down what
		// it does not understand.
		if rec.Version != recordVersion {
			return fmt.Errorf("endpoint %d: record format %d, this build reads %d", id, rec.Version, recordVersion)
		}
		if rec.State != recordReady {
			verb := "adding"
			if rec.State == recordDeleting {
				verb = "deleting"
			}
			if err := d.removeRecorded(id, rec, true); err != nil {
				return err
			}
			d.restored.Removed = append(d.restored.Removed,
				noteFor(id, rec, fmt.Sprintf("a Datapath stopped while %s it", verb)))
			continue
		}
		ep, stale, repairs, err := d.adopt(id, rec)
		if err != nil {
			return err
		}
		if stale != "" {
			if err := d.removeRecorded(id, rec, false); err != nil {
				return err
			}
			d.restored.Removed = append(d.restored.Removed, noteFor(id, rec, stale))
			continue
		}
		d.endpoints[id] = ep
		d.restored.Adopted = append(d.restored.Adopted, id)
		for _, r := range repairs {
			d.restored.Repaired = append(d.restored.Repaired, noteFor(id, ep.rec, r))
		}
	}
	return d.sweepOrphans()
}

// adopt takes over the endpoint a ready record describes. It first checks,
// without changing anything, that the endpoint is still there; if not it
// returns why (stale). Then it loads this build's programs, swaps them in
// and rewrites the endpoint's map entries from the record. On error the
// endpoint is left installed, with its old or its new programs.
func (d *Datapath) adopt(id EndpointID, rec endpointRecord) (_ *Endpoint, stale string, repairs []string, err error) {
	cfg, err := rec.endpointConfig(id)
	if err != nil {
		return nil, "", nil, err
	}
	ep := &Endpoint{dp: d, cfg: cfg, rec: rec, recorded: true, attach: rec.attachMode()}
	for _, a := range ep.addrs() {
		var info endpointInfo
		switch err := d.maps.endpoints.Lookup(endpointKeyFor(a), &info); {
		case err == nil && EndpointID(info.EndpointID) != id:
			return nil, fmt.Sprintf("its address %v belongs to endpoint %d", a, info.EndpointID), nil, nil
		case err != nil && !errors.Is(err, ebpf.ErrKeyNotExist):
			return nil, "", nil, fmt.Errorf("endpoint %d: look up %v: %w", id, a, err)
		}
	}
	var host *hostInspection
	if !cfg.Detached {
		if host, err = d.node.inspectHost(rec, d.endpointPinDir(id)); err != nil {
			return nil, "", nil, fmt.Errorf("endpoint %d: %w", id, err)
		}
		if host.stale != "" {
			return nil, host.stale, nil, nil
		}
		defer host.close()
		repairs = append(repairs, host.repairs...)
	}

	defer func() {
		if err != nil {
			_ = ep.release()
		}
	}()
	if ep.progs, err = loadEndpointPrograms(d.spec, d.maps, cfg); err != nil {
		return nil, "", nil, err
	}
	var repaired string
	if ep.policy, repaired, err = d.adoptPolicyMap(id); err != nil {
		return nil, "", nil, err
	}
	ep.policyInstalled = true
	if repaired != "" {
		repairs = append(repairs, repaired)
	}
	if host != nil {
		ep.host = host.host
		ep.cfg.HostIfName = host.host.name
		if ep.attachments, err = d.node.adoptAttachments(ep.attach, host, ep.progs, d.endpointPinDir(id)); err != nil {
			return nil, "", nil, fmt.Errorf("endpoint %d: %w", id, err)
		}
		// The interface may have been renamed, and only the kernel knows
		// the MAC it got.
		if err := ep.updateRecord(func(r *endpointRecord) { r.setHost(ep.host) }); err != nil {
			return nil, "", nil, err
		}
	}
	// The record is the truth for the endpoints map: a crash between the
	// two writes of SetIdentity, or a lost entry, is put right here.
	info := ep.info(identity.ID(rec.Identity))
	for _, a := range ep.addrs() {
		k := endpointKeyFor(a)
		var old endpointInfo
		switch err := d.maps.endpoints.Lookup(k, &old); {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			repairs = append(repairs, fmt.Sprintf("address %v was missing from the endpoints map", a))
		case err != nil:
			return nil, "", nil, fmt.Errorf("endpoint %d: look up %v: %w", id, a, err)
		case old == info:
			ep.entries = append(ep.entries, k)
			continue
		}
		if err := d.maps.endpoints.Update(k, info, ebpf.UpdateAny); err != nil {
			return nil, "", nil, fmt.Errorf("endpoint %d: write %v: %w", id, a, err)
		}
		ep.entries = append(ep.entries, k)
	}
	ep.identity = identity.ID(rec.Identity)
	return ep, "", repairs, nil
}

// adoptPolicyMap opens the endpoint's policy map from the policy
// hash-of-maps. A missing one is replaced by an empty map, which denies
// every new connection: the datapath fails closed until the agent writes
// the endpoint's policy again.
func (d *Datapath) adoptPolicyMap(id EndpointID) (_ *PolicyMap, repaired string, _ error) {
	var inner *ebpf.Map
	err := d.maps.policy.Lookup(uint32(id), &inner)
	if err == nil {
		return &PolicyMap{endpoint: id, m: inner}, "", nil
	}
	if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, "", fmt.Errorf("endpoint %d: open policy map: %w", id, err)
	}
	pm, err := newPolicyMap(d.spec.Maps[datapathMapNpPolicy].InnerMap, id)
	if err != nil {
		return nil, "", err
	}
	if err := d.maps.policy.Update(uint32(id), pm.m, ebpf.UpdateNoExist); err != nil {
		pm.close()
		return nil, "", fmt.Errorf("endpoint %d: install policy map: %w", id, err)
	}
	return pm, "its policy map was missing: installed an empty one, which denies every new connection", nil
}

// removeRecorded deletes the state of an endpoint found in the records
// map: its entries in the endpoints map, its pins, its policy map, the
// conntrack entries of its addresses and, last, the record. interrupted
// says a process died in AddEndpoint or Delete: then the host interface is
// the datapath's own and is deleted too, if it is still there. A stale
// endpoint's interface is gone, or is somebody else's by now. The record
// stays if anything fails, so that the next New tries again.
func (d *Datapath) removeRecorded(id EndpointID, rec endpointRecord, interrupted bool) error {
	var errs []error
	var owned []netip.Addr
	for _, a := range rec.addrs() {
		k := endpointKeyFor(a)
		var info endpointInfo
		switch err := d.maps.endpoints.Lookup(k, &info); {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			owned = append(owned, a)
		case err != nil:
			errs = append(errs, fmt.Errorf("look up %v: %w", a, err))
		case EndpointID(info.EndpointID) == id:
			owned = append(owned, a)
			if err := d.maps.endpoints.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("remove address %v: %w", a, err))
			}
		}
	}
	if interrupted && !rec.detached() {
		errs = append(errs, d.node.removeInterruptedHost(rec))
	}
	if err := os.RemoveAll(d.endpointPinDir(id)); err != nil {
		errs = append(errs, fmt.Errorf("remove pins: %w", err))
	}
	if err := d.maps.policy.Delete(uint32(id)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("remove policy map: %w", err))
	}
	// Connections of an address another endpoint holds now are its own.
	if _, err := d.conntrack.deleteAddrs(owned); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("endpoint %d: remove: %w", id, err)
	}
	if err := d.maps.records.Delete(uint32(id)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("endpoint %d: remove record: %w", id, err)
	}
	return nil
}

// sweepOrphans deletes the endpoint state that no adopted endpoint
// accounts for: entries of the endpoints map, policy maps and pin
// directories without a record. Only a damaged directory, or one a build
// without records wrote, has any.
func (d *Datapath) sweepOrphans() error {
	orphans := make(map[EndpointID]*RestoreNote)
	orphan := func(id EndpointID) *RestoreNote {
		n, ok := orphans[id]
		if !ok {
			n = &RestoreNote{ID: id, Reason: "its state had no record"}
			orphans[id] = n
		}
		return n
	}
	owns := func(id EndpointID, k endpointKey) bool {
		ep := d.endpoints[id]
		return ep != nil && slices.Contains(ep.entries, k)
	}

	var (
		keys []endpointKey
		k    endpointKey
		info endpointInfo
	)
	it := d.maps.endpoints.Iterate()
	for it.Next(&k, &info) {
		id := EndpointID(info.EndpointID)
		if owns(id, k) {
			continue
		}
		keys = append(keys, k)
		if d.endpoints[id] == nil {
			n := orphan(id)
			if a := k.Addr.addr(k.IPVersion); a.Is4() {
				n.IPv4 = a
			} else {
				n.IPv6 = a
			}
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read endpoints map: %w", err)
	}
	for _, k := range keys {
		if err := d.maps.endpoints.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove orphaned endpoint entry: %w", err)
		}
	}

	var (
		ids   []uint32
		id    uint32
		inner *ebpf.Map
	)
	pit := d.maps.policy.Iterate()
	for pit.Next(&id, &inner) {
		inner.Close()
		if d.endpoints[EndpointID(id)] == nil {
			ids = append(ids, id)
			orphan(EndpointID(id))
		}
	}
	if err := pit.Err(); err != nil {
		return fmt.Errorf("read policy maps: %w", err)
	}
	for _, id := range ids {
		if err := d.maps.policy.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove orphaned policy map of endpoint %d: %w", id, err)
		}
	}

	root := filepath.Join(d.cfg.BPFFSDir, endpointPinDirName)
	dirs, err := os.ReadDir(root)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read endpoint pins: %w", err)
	}
	for _, e := range dirs {
		n, err := strconv.ParseUint(e.Name(), 10, 16)
		if err == nil && d.endpoints[EndpointID(n)] != nil {
			continue
		}
		if err == nil {
			orphan(EndpointID(n))
		}
		if err := os.RemoveAll(filepath.Join(root, e.Name())); err != nil {
			return fmt.Errorf("remove orphaned pins %s: %w", e.Name(), err)
		}
	}

	notes := make([]RestoreNote, 0, len(orphans))
	for _, n := range orphans {
		notes = append(notes, *n)
	}
	slices.SortFunc(notes, func(a, b RestoreNote) int { return cmp.Compare(a.ID, b.ID) })
	d.restored.Removed = append(d.restored.Removed, notes...)
	return nil
}
