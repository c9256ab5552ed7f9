module guestlist.dev/services

go 1.26.8
