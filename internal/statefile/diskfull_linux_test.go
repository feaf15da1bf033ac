package statefile_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/internal/statefile"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// TestPrivilegedStateFileDiskFull saves a state file on a 256 KiB tmpfs
// that a filler file has filled: Save fails with ENOSPC, the file keeps its
// old content, no temporary file is left, and once there is room again
// the next Save succeeds.
func TestPrivilegedStateFileDiskFull(t *testing.T) {
	testutils.RequirePrivileged(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=256k"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount tmpfs: %v", err)
		}
	})
	f, err := statefile.New(filepath.Join(dir, "state"), fileFormat)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Save([]byte("old")); err != nil {
		t.Fatal(err)
	}

	// Fill the file system to the last block.
	filler, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	block := bytes.Repeat([]byte{0xaa}, 4096)
	for {
		if _, err := filler.Write(block); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("fill: %v", err)
			}
			break
		}
	}
	filler.Close()

	body := bytes.Repeat([]byte("new state "), 2000) // 20 KB: more than a block
	renamed, err := f.Save(body)
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("Save on a full disk: %v, want ENOSPC", err)
	}
	if renamed {
		t.Error("Save on a full disk renamed a file into place")
	}
	if got, err := f.Load(); err != nil || string(got) != "old" {
		t.Fatalf("Load after the failed Save = %q, %v; want the old content", got, err)
	}
	if _, err := os.Stat(f.Path() + ".tmp"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temporary file left on the full disk: %v", err)
	}

	if err := os.Remove(filler.Name()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Save(body); err != nil {
		t.Fatalf("Save once there is room: %v", err)
	}
	if got, err := f.Load(); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("Load after the second Save: %d bytes, %v", len(got), err)
	}
}
