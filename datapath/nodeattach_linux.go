package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// attachNodePrograms loads the program of each hook (the program of the
// filter's name) and attaches it to the interface with ifindex, adopting
// the pinned links in dir that are still attached there. On error nothing
// new stays attached; adopted links keep their old or new program.
func (d *Datapath) attachNodePrograms(dir string, ifindex int, hooks []endpointHook, load nodeLoad) (_ *nodePrograms, err error) {
	names := make([]string, len(hooks))
	for i, h := range hooks {
		names[i] = h.filter
	}
	spec := d.spec.Copy()
	onlyPrograms(spec, names...)
	for name, v := range load.vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: d.maps.replacements()})
	if err != nil {
		return nil, fmt.Errorf("load programs: %w", err)
	}
	np := &nodePrograms{maps: map[string]*ebpf.Map{}}
	for _, name := range names {
		np.progs = append(np.progs, coll.DetachProgram(name))
	}
	for _, name := range load.maps {
		np.maps[name] = coll.DetachMap(name)
	}
	coll.Close()
	defer func() {
		if err != nil {
			np.closePrograms()
		}
	}()
	pinDir := d.nodePinDir(dir)
	if d.attach != AttachTCX || pinDir == "" {
		np.att, err = d.node.attachHooks(d.attach, ifindex, hooks, np.progs, pinDir)
		return np, err
	}
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin directory: %w", err)
	}
	var fresh []attachment
	defer func() {
		if err != nil {
			for _, a := range fresh {
				_ = a.detach()
			}
			for _, a := range np.att {
				_ = a.release()
			}
		}
	}()
	for i, h := range hooks {
		pin := filepath.Join(pinDir, h.pin)
		if l, ok, err := d.node.pinnedLinkAt(pin, ifindex, h); err != nil {
			return nil, err
		} else if ok {
			if err := l.Update(np.progs[i]); err != nil {
				l.Close()
				return nil, fmt.Errorf("replace the program of the %s link: %w", h.pin, err)
			}
			np.att = append(np.att, tcxAttachment{l})
			np.adopted = true
			continue
		}
		a, err := d.node.attachTCX(ifindex, h, np.progs[i], pinDir)
		if err != nil {
			return nil, fmt.Errorf("attach %s to ifindex %d: %w", h.pin, ifindex, err)
		}
		fresh = append(fresh, a)
		np.att = append(np.att, a)
	}
	return np, nil
}

// pinnedLinkAt opens the tcx link pinned at pin if it is attached to hook
// h of ifindex. A pin of a link that is not (its device is gone, or it is
// another's) is removed.
func (n *nodeNamespace) pinnedLinkAt(pin string, ifindex int, h endpointHook) (link.Link, bool, error) {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("load %s link: %w", h.pin, err)
	}
	ok, err := n.tcxLinkAttached(l, ifindex, h)
	if err != nil {
		l.Close()
		return nil, false, fmt.Errorf("%s link: %w", h.pin, err)
	}
	if ok {
		return l, true, nil
	}
	// Detach it from wherever it is, then forget it.
	err = errors.Join(l.Unpin(), l.Close())
	if err != nil {
		return nil, false, fmt.Errorf("remove stale %s link: %w", h.pin, err)
	}
	return nil, false, nil
}
