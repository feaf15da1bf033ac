//go:build !linux

package datapath

import "github.com/cilium/ebpf"

// endpointHook names an attachment point (attach_linux.go).
type endpointHook struct {
	pin    string
	filter string
	egress bool
}

func (*nodeNamespace) attachTCX(int, endpointHook, *ebpf.Program, string) (attachment, error) {
	return nil, errNotLinux
}

func (*nodeNamespace) attachTC(int, endpointHook, *ebpf.Program) (attachment, error) {
	return nil, errNotLinux
}

func (*Datapath) attachNodePrograms(string, int, []endpointHook, nodeLoad) (*nodePrograms, error) {
	return nil, errNotLinux
}
