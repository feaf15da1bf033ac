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
	tmp := testutils.NewTmpfs(t, 256<<10)
	f, err := statefile.New(filepath.Join(tmp.Dir, "state"), fileFormat)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Save([]byte("old")); err != nil {
		t.Fatal(err)
	}
	tmp.Fill(t)

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

	tmp.Free(t)
	if _, err := f.Save(body); err != nil {
		t.Fatalf("Save once there is room: %v", err)
	}
	if got, err := f.Load(); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("Load after the second Save: %d bytes, %v", len(got), err)
	}
}
