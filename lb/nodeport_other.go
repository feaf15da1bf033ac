//go:build !linux

package lb

import (
	"fmt"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
)

// NorthSouth is north-south load balancing; it needs Linux.
type NorthSouth struct{}

var errNodePortNotLinux = fmt.Errorf("north-south load balancing needs Linux: %w", nodeplane.ErrNotSupported)

// NewNorthSouth fails: north-south load balancing needs Linux.
func NewNorthSouth(NorthSouthConfig) (*NorthSouth, error) { return nil, errNodePortNotLinux }

func (*NorthSouth) Attach(int, AttachMode) (AttachMode, error)    { return 0, errNodePortNotLinux }
func (*NorthSouth) Upsert(Service, []Backend) error               { return errNodePortNotLinux }
func (*NorthSouth) AttachDSRBackend(int) error                    { return errNodePortNotLinux }
func (*NorthSouth) Delete(Frontend) error                         { return errNodePortNotLinux }
func (*NorthSouth) Drops() (map[monitor.DropReason]uint64, error) { return nil, errNodePortNotLinux }
func (*NorthSouth) Close() error                                  { return nil }
func (*NorthSouth) NATFlows() (int, error)                        { return 0, errNodePortNotLinux }
func (*NorthSouth) GCNAT() (int, error)                           { return 0, errNodePortNotLinux }

// DropReader reads a NorthSouth's drop records; it needs Linux.
type DropReader struct{}

func (*NorthSouth) NewDropReader() (*DropReader, error) { return nil, errNodePortNotLinux }
func (*NorthSouth) DropEventsLost() (uint64, error)     { return 0, errNodePortNotLinux }
func (*DropReader) ReadRaw() ([]byte, error)            { return nil, errNodePortNotLinux }
func (*DropReader) Close() error                        { return nil }
