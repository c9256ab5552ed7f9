module guestlist.dev/services

go 1.26.8

require (
	go.etcd.io/bbolt v1.4.3 // indirect
	golang.org/x/net v0.61.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261110000943-09e21b237f2c // indirect
	google.golang.org/protobuf v1.36.13-0.20261016172727-e9ee2a76ab8e // indirect
)

require google.golang.org/grpc v1.84.0

replace (
	guestlist.dev/edge => ../edge
	guestlist.dev/projections => ../projections
	guestlist.dev/proto => ../proto
)
