// Package hubble serves a node's flows over Hubble's Observer gRPC API, so
// that the real `hubble` CLI (and Hubble UI or Relay, which speak the same
// API) work against nodeplane unmodified:
//
//	hubble observe --server 127.0.0.1:4245 --verdict DROPPED -o json
//	hubble status --server 127.0.0.1:4245
//
// [Server] implements GetFlows (Hubble's whitelist/blacklist filters,
// Number with First or last, Follow, Since, Until, field masks, lost-event
// reports), ServerStatus, GetNodes (this node), GetNamespaces and the gRPC
// health service `hubble status` checks first. The flows come from an
// [Observer], normally a *flow.Observer. The rest of the Observer service
// (agent and debug events) answers Unimplemented: nodeplane has none.
//
// The conversion between nodeplane's flow types and Hubble's protobufs is
// in one place: [Proto] for flows, [Filters] for what clients send.
// flow.Flow carries flow.proto's numbers, so the conversion is field by
// field. A filter field that nodeplane's flows never carry (HTTP, DNS,
// FQDN, workloads, ...) is refused with InvalidArgument rather than
// ignored.
//
// A slow client never holds up the datapath reader: the Observer's ring
// does not wait for readers, so a GetFlows stream that falls behind loses
// the flows the ring overwrote and receives a LostEvent (source
// HUBBLE_RING_BUFFER) saying how many; flow.Observer counts them in its
// Status and metrics.
//
// # What importing this package costs
//
// This is the only nodeplane package that imports Cilium's API definitions
// (github.com/cilium/cilium/api/v1/flow, observer, relay) and with them
// gRPC and protobuf; flow itself does not, and flow/metrics brings only
// client_golang. Measured with Go 1.26 on linux/amd64:
//
//	go list -deps ./flow/hubble | wc -l    320 packages (138 outside std)
//	go list -deps ./flow/metrics | wc -l   239
//	go list -deps ./flow        | wc -l     73 packages (3 outside std)
//
// Building it downloads the whole Cilium module (a 37 MB zip, 97 MB
// unpacked) for three generated packages; programs that do not import
// flow/hubble only fetch Cilium's go.mod.
//
// Requiring github.com/cilium/cilium v1.20.2 in the SDK's go.mod also
// raises, by minimum version selection, modules the whole SDK shares: the
// go directive to at least 1.26.0 (Cilium's), google.golang.org/grpc to
// v1.83.1, and github.com/vishvananda/netlink from v1.3.1 to the
// pre-release v1.3.2-0.20260624190457-bab08b3566fc that Cilium pins.
// Cilium's go.mod has a replace directive (sigs.k8s.io/controller-tools);
// it only matters for building Cilium's own binaries (see .ci/hubble-cli),
// not for importing these API packages: `go mod tidy` works without it.
package hubble
