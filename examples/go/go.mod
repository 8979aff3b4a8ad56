module example.com/jetway/orders

go 1.19
