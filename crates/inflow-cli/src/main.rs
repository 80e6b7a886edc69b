fn main() {
    println!("{}", inflow::version());
}
