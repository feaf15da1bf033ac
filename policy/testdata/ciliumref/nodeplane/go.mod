module nodeplaneref

go 1.25.0

require github.com/nodeplane/nodeplane v0.0.0

require (
	github.com/cilium/ebpf v0.22.0 // indirect
	github.com/vishvananda/netlink v1.3.1 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
	go.yaml.in/yaml/v3 v3.0.4 // indirect
	golang.org/x/sys v0.45.0 // indirect
)

replace github.com/nodeplane/nodeplane => ../../../..
