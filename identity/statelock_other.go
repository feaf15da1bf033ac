//go:build !linux

package identity

import "os"

// lockFile opens path. Outside Linux the state file is not locked; do not
// point two allocators at one file.
func lockFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
}
