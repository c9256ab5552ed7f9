module guestlist.dev/projections

go 1.26.8

replace (
	guestlist.dev/edge => ../edge
	guestlist.dev/proto => ../proto
)

require (
	google.golang.org/protobuf v1.36.13-0.20261016172727-e9ee2a76ab8e
	guestlist.dev/proto v0.0.0-00010101000000-000000000000
)
