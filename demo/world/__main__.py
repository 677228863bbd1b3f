from demo.world import main

main()
