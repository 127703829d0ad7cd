fn main() {
    println!("avatar: under construction");
}
