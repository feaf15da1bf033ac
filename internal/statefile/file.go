package statefile

import (
	"fmt"
	"os"
	"path/filepath"
)

// File is a state file of one [Format] at one path. It keeps no file open.
// Load and Save take no lock: processes that share a file serialise their
// read-modify-write cycles with a [Lock] on [File.LockPath].
type File struct {
	path   string
	format Format
	// FS carries out the steps of Save; nil means the operating system.
	// Tests set it to fail or "crash" any one step.
	FS FS
}

// New returns the File at path. Nothing is read or written until Load or
// Save; the directory must exist by then.
func New(path string, format Format) (*File, error) {
	if path == "" {
		return nil, fmt.Errorf("empty path: %w", ErrInvalidPath)
	}
	path = filepath.Clean(path)
	if base := filepath.Base(path); base == "." || base == ".." || base == string(filepath.Separator) {
		return nil, fmt.Errorf("%q is not a file name: %w", path, ErrInvalidPath)
	}
	return &File{path: path, format: format}, nil
}

// Path returns the file's path.
func (f *File) Path() string { return f.path }

// LockPath is the file to lock for exclusive use of f: its path with
// ".lock" appended. The state file itself is replaced by every Save, so a
// lock on it would not reach the next holder.
func (f *File) LockPath() string { return f.path + ".lock" }

// Load reads the file and returns its body. A missing file fails with an
// error that matches [os.ErrNotExist]; a damaged one with [ErrCorrupt].
func (f *File) Load() ([]byte, error) {
	data, err := os.ReadFile(f.path)
	if err != nil {
		return nil, err
	}
	body, err := f.format.Decode(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.path, err)
	}
	return body, nil
}

// Save replaces the file's content with body, atomically and durably, and
// reports whether the new file was renamed into place (so that readers may
// see it) even if a later step failed. A temporary file that a failure
// leaves behind is replaced by the next Save.
func (f *File) Save(body []byte) (renamed bool, err error) {
	fsys := f.FS
	if fsys == nil {
		fsys = OS{}
	}
	tmp := f.path + ".tmp"
	if err := writeTemp(fsys, tmp, f.format.Encode(body)); err != nil {
		return false, err
	}
	if err := fsys.Rename(tmp, f.path); err != nil {
		fsys.Remove(tmp)
		return false, err
	}
	// The rename is only durable once the directory is.
	dir, err := fsys.OpenDir(filepath.Dir(f.path))
	if err != nil {
		return true, err
	}
	err = dir.Sync()
	if cerr := dir.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return true, fmt.Errorf("sync directory: %w", err)
	}
	return true, nil
}

func writeTemp(fsys FS, tmp string, data []byte) error {
	w, err := fsys.Create(tmp)
	if err != nil {
		return err
	}
	_, err = w.Write(data)
	if err == nil {
		err = w.Sync()
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		fsys.Remove(tmp)
	}
	return err
}

// FS is the file-system seam of [File.Save]: the steps of an atomic
// replace.
type FS interface {
	// Create creates or truncates a file for writing.
	Create(name string) (WriteSyncCloser, error)
	Rename(from, to string) error
	// Remove removes a file, ignoring errors: it only cleans up.
	Remove(name string)
	OpenDir(name string) (SyncCloser, error)
}

// SyncCloser is an open directory.
type SyncCloser interface {
	Sync() error
	Close() error
}

// WriteSyncCloser is an open file.
type WriteSyncCloser interface {
	Write([]byte) (int, error)
	SyncCloser
}

// OS is the [FS] of the operating system.
type OS struct{}

// Create opens name for writing with mode 0600, truncating it.
func (OS) Create(name string) (WriteSyncCloser, error) {
	return os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
}

// Rename is [os.Rename].
func (OS) Rename(from, to string) error { return os.Rename(from, to) }

// Remove is [os.Remove], without its error.
func (OS) Remove(name string) { _ = os.Remove(name) }

// OpenDir is [os.Open].
func (OS) OpenDir(name string) (SyncCloser, error) { return os.Open(name) }
