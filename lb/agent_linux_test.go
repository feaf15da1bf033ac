package lb

// agentMain is the entry point of the re-executed test binary, see
// runClientAgent.
var agentMain = runClientAgent
