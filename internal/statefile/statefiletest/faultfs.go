// Package statefiletest helps test code that saves state files: a
// [statefile.FS] that fails, or "crashes" at, any one step of a save.
package statefiletest

import (
	"errors"
	"fmt"
	"os"

	"github.com/nodeplane/nodeplane/internal/statefile"
)

// ErrInjected is wrapped by every failure a [FaultFS] injects.
var ErrInjected = errors.New("injected fault")

// SaveSteps are the steps of a clean [statefile.File.Save], in order, as
// [FaultFS] names them.
var SaveSteps = []string{"create", "write", "sync", "close", "rename", "opendir", "syncdir", "closedir"}

// RenameStep is the 1-based index of "rename" in SaveSteps: a save that
// fails before it leaves the old file, one that fails after it the new.
const RenameStep = 5

// FaultFS injects a failure at one step of a save. In crash mode every
// later step fails too, as if the process had died there: nothing cleans
// up, and a failed write leaves half its data behind.
type FaultFS struct {
	statefile.OS
	// FailAt is the 1-based step to fail; 0 never fails.
	FailAt int
	// Crash makes every step after FailAt fail too.
	Crash bool
	// Steps records the steps taken, failed ones included.
	Steps []string
	dead  bool
}

func (f *FaultFS) step(name string) error {
	f.Steps = append(f.Steps, name)
	if f.dead {
		return ErrInjected
	}
	if len(f.Steps) == f.FailAt {
		f.dead = f.Crash
		return fmt.Errorf("%s: %w", name, ErrInjected)
	}
	return nil
}

// Create implements [statefile.FS].
func (f *FaultFS) Create(name string) (statefile.WriteSyncCloser, error) {
	if err := f.step("create"); err != nil {
		return nil, err
	}
	file, err := f.OS.Create(name)
	if err != nil {
		return nil, err
	}
	return &faultFile{f, file.(*os.File)}, nil
}

// Rename implements [statefile.FS].
func (f *FaultFS) Rename(from, to string) error {
	if err := f.step("rename"); err != nil {
		return err
	}
	return f.OS.Rename(from, to)
}

// Remove implements [statefile.FS].
func (f *FaultFS) Remove(name string) {
	if f.step("remove") == nil {
		f.OS.Remove(name)
	}
}

// OpenDir implements [statefile.FS].
func (f *FaultFS) OpenDir(name string) (statefile.SyncCloser, error) {
	if err := f.step("opendir"); err != nil {
		return nil, err
	}
	d, err := f.OS.OpenDir(name)
	if err != nil {
		return nil, err
	}
	return &faultDir{f, d.(*os.File)}, nil
}

type faultFile struct {
	fs *FaultFS
	f  *os.File
}

func (f *faultFile) Write(b []byte) (int, error) {
	if err := f.fs.step("write"); err != nil {
		n, _ := f.f.Write(b[:len(b)/2]) // a torn write
		return n, err
	}
	return f.f.Write(b)
}

func (f *faultFile) Sync() error {
	if err := f.fs.step("sync"); err != nil {
		return err
	}
	return f.f.Sync()
}

func (f *faultFile) Close() error {
	err := f.fs.step("close")
	if cerr := f.f.Close(); err == nil { // the descriptor goes either way
		err = cerr
	}
	return err
}

type faultDir struct {
	fs *FaultFS
	d  *os.File
}

func (d *faultDir) Sync() error {
	if err := d.fs.step("syncdir"); err != nil {
		return err
	}
	return d.d.Sync()
}

func (d *faultDir) Close() error {
	err := d.fs.step("closedir")
	if cerr := d.d.Close(); err == nil {
		err = cerr
	}
	return err
}
