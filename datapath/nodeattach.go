package datapath

import (
	"errors"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// nodePrograms are programs the node has once, not per endpoint (the
// tunnel device's, the external interface's), attached to hooks of one
// interface of the node namespace.
//
// In pinned mode (Config.BPFFSDir) their tcx links are pinned in
// BPFFSDir/<dir>/, so that they outlive the process, and the next attach
// to the same interface swaps its programs into those links (a link
// update: the interface is never without a program), as adopted
// endpoints get theirs; a tc filter is replaced in place in any mode.
type nodePrograms struct {
	progs []*ebpf.Program
	att   []attachment
	// maps are the collection's own maps the caller asked to keep
	// (nodeLoad.maps), until it takes them.
	maps map[string]*ebpf.Map
	// adopted says that programs of an earlier process were replaced.
	adopted bool
}

// nodeLoad says how to load node programs beyond the Datapath's spec:
// constants to set and maps of the collection's own (not the Datapath's
// shared maps) to keep.
type nodeLoad struct {
	vars map[string]any
	maps []string
}

// takeMap hands the kept map name to the caller, who closes it.
func (np *nodePrograms) takeMap(name string) *ebpf.Map {
	m := np.maps[name]
	delete(np.maps, name)
	return m
}

// nodePinDir is the directory of dir's pins, "" without pinning.
func (d *Datapath) nodePinDir(dir string) string {
	if d.cfg.BPFFSDir == "" {
		return ""
	}
	return filepath.Join(d.cfg.BPFFSDir, dir)
}

// release lets go of the process's handles: pinned links and tc filters
// stay attached with their programs, unpinned links are detached.
func (np *nodePrograms) release() error {
	var errs []error
	for _, a := range np.att {
		errs = append(errs, a.release())
	}
	np.att = nil
	return errors.Join(append(errs, np.closePrograms())...)
}

// detach removes the programs from the interface, and their pins.
func (np *nodePrograms) detach() error {
	var errs []error
	for _, a := range np.att {
		errs = append(errs, a.detach())
	}
	np.att = nil
	return errors.Join(append(errs, np.closePrograms())...)
}

func (np *nodePrograms) closePrograms() error {
	var errs []error
	for i, p := range np.progs {
		if p != nil {
			errs = append(errs, p.Close())
			np.progs[i] = nil
		}
	}
	for name, m := range np.maps {
		errs = append(errs, m.Close())
		delete(np.maps, name)
	}
	return errors.Join(errs...)
}
