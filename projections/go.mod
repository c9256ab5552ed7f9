module guestlist.dev/projections

go 1.26.8
