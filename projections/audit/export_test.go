package audit

// WithPrepare replaces decision.Prepare in a Service, for the tests of package audit_test that
// count its calls behind a real server.
var WithPrepare = withPrepare
