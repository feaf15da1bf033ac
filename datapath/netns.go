package datapath

// NetNS is a network namespace created for an endpoint by a program that
// runs its workloads itself: a test, a demo, a single-binary agent. A CNI
// plugin does not need it: the container runtime creates the namespace and
// hands its path over, which goes straight into [EndpointConfig].NetNS.
//
// [NetNS.Path] is what [EndpointConfig].NetNS takes; [NetNS.Do] runs code
// inside the namespace, such as a listener for the workload's traffic
// (sockets keep the namespace they were created in, so a listener opened in
// Do serves from any goroutine afterwards). The namespace lives until
// Close and whatever else holds it (the endpoint's interface, processes
// started in it) are gone.
type NetNS struct {
	netNS
}
